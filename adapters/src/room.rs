//! Room for request bodies whose signature is not checked yet. Every inbound endpoint
//! (GitHub, Slack, Discord, webhook triggers) takes its room from one process-wide budget,
//! [`ROOM_BYTES`], by the body's declared length (or its endpoint's most, when it declares
//! none) before reading a byte of it, and gives it back once the body is verified or
//! refused: what callers who have proved nothing can make the server hold is bounded,
//! however many connections they open. A body that does not find room within [`WAIT`] is
//! answered 503; one larger than its endpoint allows, 413 before it is read.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Unverified bodies in memory at once, at most (in bytes): room for one delivery of the
/// largest size GitHub sends, or many of the usual few kilobytes.
pub const ROOM_BYTES: usize = 32 * 1024 * 1024;
/// The unit room is counted in.
const UNIT: usize = 64 * 1024;
/// How long a body waits for room before it is answered 503.
pub const WAIT: Duration = Duration::from_secs(10);

fn room() -> Arc<Semaphore> {
    static ROOM: OnceLock<Arc<Semaphore>> = OnceLock::new();
    ROOM.get_or_init(|| Arc::new(Semaphore::new(ROOM_BYTES / UNIT)))
        .clone()
}

/// Room taken for one body; given back when dropped.
pub struct Reserved(#[allow(dead_code)] OwnedSemaphorePermit);

/// Takes room for the body `headers` announce, at most `max` bytes: the length to read it
/// to, or the answer that refuses it.
pub async fn reserve(headers: &HeaderMap, max: usize) -> Result<(usize, Reserved), Response> {
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => max,
        Some(v) => match v.to_str().ok().and_then(|v| v.parse::<usize>().ok()) {
            Some(n) => n,
            None => {
                return Err(
                    (StatusCode::BAD_REQUEST, "Content-Length is not a number\n").into_response(),
                )
            }
        },
    };
    if declared > max {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            match max % (1024 * 1024) {
                0 => format!("the body is larger than {} MB\n", max / (1024 * 1024)),
                _ => format!("the body is larger than {} KB\n", max / 1024),
            },
        )
            .into_response());
    }
    let units = declared.div_ceil(UNIT).max(1) as u32;
    match tokio::time::timeout(WAIT, room().acquire_many_owned(units)).await {
        Ok(Ok(permit)) => Ok((declared, Reserved(permit))),
        _ => {
            tracing::warn!("a request waited too long for room to read its body");
            Err((StatusCode::SERVICE_UNAVAILABLE, "busy; try again\n").into_response())
        }
    }
}

/// Reads a body of at most `limit` bytes, kept in the pieces it arrived in: an unverified
/// body is never one large allocation, and one longer than announced is cut off.
pub async fn read_pieces(body: axum::body::Body, limit: usize) -> Result<Vec<Bytes>, &'static str> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let (mut pieces, mut len) = (Vec::new(), 0usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "the body could not be read")?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            if len > limit {
                return Err(
                    "the body is longer than its Content-Length, or than this endpoint takes",
                );
            }
            pieces.push(data);
        }
    }
    Ok(pieces)
}

/// A request body of at most `MAX` bytes, read into room taken first ([`reserve`]). Drop
/// [`Unverified::room`] once the signature is checked.
pub struct Unverified<const MAX: usize> {
    pub bytes: Bytes,
    pub room: Reserved,
}

impl<S: Send + Sync, const MAX: usize> FromRequest<S> for Unverified<MAX> {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Response> {
        let (declared, room) = reserve(req.headers(), MAX).await?;
        let pieces = read_pieces(req.into_body(), declared)
            .await
            .map_err(|why| (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response())?;
        let bytes = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.into_iter().next().expect("one piece"),
            _ => Bytes::from(pieces.concat()),
        };
        Ok(Unverified { bytes, room })
    }
}
