//! Accepting a WebSocket upgrade by hand in the fakes, so the `101` can carry whatever a test
//! wants and the fake sees exactly what the client (through the gateway) offered.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Answers `req` with `101 Switching Protocols` (plus `extra` headers) and hands the upgraded
/// connection to `serve`. No extension is ever agreed: frames are plain.
pub fn accept<F, Fut>(req: Request, extra: HeaderMap, serve: F) -> Response
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return (StatusCode::BAD_REQUEST, "not a websocket request").into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(up) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        serve(ws).await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("an accept key is a header value"),
    );
    h.extend(extra);
    r
}

/// The extensions a WebSocket request offered, as sent.
pub fn offered_extensions(headers: &HeaderMap) -> Option<String> {
    headers
        .get("sec-websocket-extensions")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}
