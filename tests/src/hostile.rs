//! A hostile upstream, over HTTPS with its own test CA: it gives back whatever credential the
//! gateway injects, in every place and shape it can. Each request's `Authorization` header
//! (the injected value) comes back in the body, compressed with every coding whatever the
//! request asked, one byte per chunk, in response headers (values and names), in the reason
//! phrase, in HTTP/2 and chunked trailers, in a `101` response's headers, and in WebSocket
//! frames (fragmented one byte per frame, text and binary, and with a reserved bit set as if
//! compression had been negotiated). A value stashed through one route is handed back on any
//! other. It also answers the Responses API over WebSocket with usage, and reports the path
//! it was asked for, so tests can see what the gateway forwarded.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// The raw-client module agents import in the wall tests (see its own comments).
pub const ATTACKER_PY: &str = include_str!("attacker.py");

/// A shell line that writes [`ATTACKER_PY`] into `$HOME`, for an agent command.
pub fn attacker_setup() -> String {
    format!("cat > \"$HOME/attacker.py\" <<'ATTACKER_EOF'\n{ATTACKER_PY}\nATTACKER_EOF\n")
}

pub struct Hostile {
    pub port: u16,
    /// The same upstream offering HTTP/1.1 only (transfer codings exist there alone).
    pub port_h1: u16,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    shared: Shared,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Default)]
struct Shared {
    /// Every `Authorization` value seen, newest last.
    seen: Arc<Mutex<Vec<String>>>,
    /// Paths as they arrived (what the gateway forwarded).
    paths: Arc<Mutex<Vec<String>>>,
    /// WebSocket upgrades: the `Sec-WebSocket-Extensions` each one offered.
    ws_offers: Arc<Mutex<Vec<Option<String>>>>,
}

impl Hostile {
    pub async fn start() -> Hostile {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::tls::TestCa::new("Hostile upstream test CA", dir.path());
        let shared = Shared::default();
        let app = Router::new()
            .route("/enc/{codings}", get(encoded))
            .route("/te", get(transfer_coded))
            .route("/split", get(split))
            .route("/headers", get(in_headers))
            .route("/trailers", get(trailers))
            .route("/forms", get(forms))
            .route("/stash", get(stash))
            .route("/bomb", get(bomb))
            .route("/ws", get(ws))
            .route("/ws-rsv", get(ws))
            .route("/v1/responses", get(ws_responses))
            .fallback(any(path_echo))
            .with_state(shared.clone());
        let port =
            crate::tls::serve_https(app.clone(), ca.server_config(&["localhost", "127.0.0.1"]))
                .await;
        let mut h1 = ca.server_config(&["localhost", "127.0.0.1"]);
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let port_h1 = crate::tls::serve_https(app, h1).await;
        Hostile {
            port,
            port_h1,
            ca_pem: ca.pem.clone(),
            ca_file: ca.file.clone(),
            shared,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The HTTP/1.1-only listener.
    pub fn url_h1(&self) -> String {
        format!("https://localhost:{}", self.port_h1)
    }

    /// Every `Authorization` value the upstream saw.
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The paths requests arrived with (after the gateway).
    pub fn paths(&self) -> Vec<String> {
        self.shared.paths.lock().unwrap().clone()
    }

    /// What each WebSocket upgrade offered in `Sec-WebSocket-Extensions`.
    pub fn ws_offers(&self) -> Vec<Option<String>> {
        self.shared.ws_offers.lock().unwrap().clone()
    }
}

fn auth_of(s: &Shared, headers: &HeaderMap) -> String {
    let a = headers
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if !a.is_empty() {
        s.seen.lock().unwrap().push(a.clone());
    }
    a
}

/// The request's headers, as JSON: what an echo service gives back.
fn echo_json(headers: &HeaderMap) -> Vec<u8> {
    let h: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    serde_json::json!({ "headers": h }).to_string().into_bytes()
}

/// `data` compressed with `coding` (gzip, deflate, br, zstd).
pub async fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
    macro_rules! enc {
        ($e:expr) => {{
            let mut e = $e;
            e.write_all(data).await.unwrap();
            e.shutdown().await.unwrap();
            e.into_inner()
        }};
    }
    match coding {
        "gzip" => enc!(GzipEncoder::new(Vec::new())),
        "deflate" => enc!(ZlibEncoder::new(Vec::new())),
        "br" => enc!(BrotliEncoder::new(Vec::new())),
        "zstd" => enc!(ZstdEncoder::new(Vec::new())),
        other => panic!("no coding {other}"),
    }
}

/// `/enc/gzip,br`: the echo, compressed with each coding in turn, whatever was asked for.
async fn encoded(
    State(s): State<Shared>,
    axum::extract::Path(codings): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    auth_of(&s, &headers);
    let mut body = echo_json(&headers);
    let list: Vec<&str> = codings.split(',').collect();
    for c in &list {
        body = compress(c, &body).await;
    }
    (
        [
            ("content-type", "application/json"),
            ("content-encoding", &list.join(", ")),
        ],
        body,
    )
        .into_response()
}

/// The echo gzipped as a transfer coding (`Transfer-Encoding: gzip, chunked`).
async fn transfer_coded(State(s): State<Shared>, headers: HeaderMap) -> Response {
    auth_of(&s, &headers);
    let body = compress("gzip", &echo_json(&headers)).await;
    // A stream, so no Content-Length is added beside the transfer coding.
    let once = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from(body))]);
    let mut r = Response::new(Body::from_stream(once));
    r.headers_mut().insert(
        "transfer-encoding",
        HeaderValue::from_static("gzip, chunked"),
    );
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// The echo, one byte per chunk.
async fn split(State(s): State<Shared>, headers: HeaderMap) -> Response {
    auth_of(&s, &headers);
    let body = echo_json(&headers);
    let chunks: Vec<Result<Bytes, Infallible>> = body
        .into_iter()
        .map(|b| Ok(Bytes::copy_from_slice(&[b])))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks)).into_response()
}

/// The value in header values, a header name and the reason phrase.
async fn in_headers(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let auth = auth_of(&s, &headers);
    let value = auth
        .split_once(' ')
        .map_or(auth.as_str(), |(_, v)| v)
        .to_string();
    let mut r = Response::new(Body::from("look at the headers\n"));
    if let Ok(v) = HeaderValue::from_str(&auth) {
        r.headers_mut().insert("x-echo-auth", v.clone());
        r.headers_mut().insert("www-authenticate", v);
    }
    if let Ok(name) = HeaderName::from_bytes(format!("x-{}", value.to_ascii_lowercase()).as_bytes())
    {
        r.headers_mut().insert(name, HeaderValue::from_static("1"));
    }
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(format!("OK {value}").into_bytes()) {
        r.extensions_mut().insert(reason);
    }
    r
}

/// A body whose trailers carry the value.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        std::task::Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }
}

async fn trailers(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let auth = auth_of(&s, &headers);
    let mut t = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&auth) {
        t.insert("x-echo-auth", v);
    }
    let mut r = Response::new(Body::new(WithTrailers {
        data: Some(Bytes::from_static(b"the value is in the trailers\n")),
        trailers: Some(t),
    }));
    r.headers_mut()
        .insert("trailer", HeaderValue::from_static("x-echo-auth"));
    r
}

/// The value in the common escapes and encodings, each on its own line.
async fn forms(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let auth = auth_of(&s, &headers);
    let v = auth
        .split_once(' ')
        .map_or(auth.as_str(), |(_, v)| v)
        .to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    let pct: String = v.bytes().map(|b| format!("%{b:02x}")).collect();
    let json_u: String = v.chars().map(|c| format!("\\u{:04X}", c as u32)).collect();
    let html: String = v.chars().map(|c| format!("&#{};", c as u32)).collect();
    let lines = [
        format!("raw={v}"),
        format!("upper={}", v.to_ascii_uppercase()),
        format!("percent={pct}"),
        format!(
            "json={}",
            serde_json::to_string(&serde_json::json!({ "k": json_u })).unwrap()
        ),
        format!("jsonescaped=\"{json_u}\""),
        format!("html={html}"),
        format!("hex={}", hex::encode(&v)),
        format!("base64={}", b64.encode(&v)),
        format!("base64in={}", b64.encode(format!("user:{v}"))),
        format!("base64in2={}", b64.encode(format!("us:{v}!"))),
        format!(
            "base64url={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("u:{v}"))
        ),
        format!("truncated={}", &v[..v.len() * 3 / 4]),
    ];
    lines.join("\n").into_response()
}

/// Hands back every value seen so far, on whatever route this was asked on.
async fn stash(State(s): State<Shared>, headers: HeaderMap) -> Response {
    auth_of(&s, &headers);
    let seen = s.seen.lock().unwrap().clone();
    format!("stashed: {}\n", seen.join(" | ")).into_response()
}

/// 256 MiB of zeros, gzipped (about 256 KiB on the wire).
async fn bomb(State(s): State<Shared>, headers: HeaderMap) -> Response {
    auth_of(&s, &headers);
    static BOMB: tokio::sync::OnceCell<Vec<u8>> = tokio::sync::OnceCell::const_new();
    let z = BOMB
        .get_or_init(|| async { compress("gzip", &vec![0u8; 256 << 20]).await })
        .await
        .clone();
    ([("content-encoding", "gzip")], z).into_response()
}

/// Reports the path it was asked for.
async fn path_echo(State(s): State<Shared>, req: Request) -> Response {
    auth_of(&s, req.headers());
    let p = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    s.paths.lock().unwrap().push(p.clone());
    // A server that honours `_method` reads the form before it answers; so does this one.
    if axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .is_err()
    {
        return (StatusCode::BAD_REQUEST, "the body did not arrive\n").into_response();
    }
    format!("upstream saw {p}\n").into_response()
}

/// Accepts a WebSocket upgrade, noting what extensions it offered.
fn accept_ws<F, Fut>(s: &Shared, req: Request, extra: HeaderMap, serve: F) -> Response
where
    F: FnOnce(crate::websocket::Socket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    s.ws_offers
        .lock()
        .unwrap()
        .push(crate::websocket::offered_extensions(req.headers()));
    crate::websocket::accept(req, extra, serve)
}

/// `/ws`: the value in the 101 headers, then in a text message split one byte per frame, in
/// a binary message, then every message of the client echoed back with it. `/ws-rsv` sends
/// its frames with the compression bit set, as if deflate had been agreed.
async fn ws(State(s): State<Shared>, req: Request) -> Response {
    let auth = auth_of(&s, req.headers());
    let rsv = req.uri().path() == "/ws-rsv";
    let mut extra = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&auth) {
        extra.insert("x-echo-auth", v);
    }
    accept_ws(&s, req, extra, move |mut ws| async move {
        let text = format!("split:{auth}");
        let bytes = text.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            let op = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let mut f = Frame::message(Bytes::copy_from_slice(&[*b]), op, i + 1 == bytes.len());
            if rsv {
                f.header_mut().rsv1 = true;
            }
            if ws.send(Message::Frame(f)).await.is_err() {
                return;
            }
        }
        let _ = ws
            .send(Message::Binary(Bytes::from(format!("binary:{auth}"))))
            .await;
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => {
                    let back = format!("echo:{}:{auth}", t.as_str());
                    if ws.send(Message::text(back)).await.is_err() {
                        return;
                    }
                }
                Message::Binary(b) => {
                    let mut back = b.to_vec();
                    back.extend_from_slice(auth.as_bytes());
                    if ws.send(Message::Binary(back.into())).await.is_err() {
                        return;
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    })
}

/// The Responses API over WebSocket: each `response.create` is answered with a completed
/// response that reports 40 input and 2 output tokens.
async fn ws_responses(State(s): State<Shared>, req: Request) -> Response {
    auth_of(&s, req.headers());
    accept_ws(&s, req, HeaderMap::new(), |mut ws| async move {
        let mut n = 0;
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                continue;
            };
            if v["type"] != "response.create" {
                continue;
            }
            n += 1;
            let id = format!("resp_{n}");
            let events = [
                serde_json::json!({"type": "response.created", "response": {"id": id}}),
                serde_json::json!({"type": "response.completed", "response": {"id": id, "status": "completed", "output": [],
                    "usage": {"input_tokens": 40, "output_tokens": 2, "total_tokens": 42}}}),
            ];
            for e in events {
                if ws.send(Message::text(e.to_string())).await.is_err() {
                    return;
                }
            }
        }
    })
}
