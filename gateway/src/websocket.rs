//! WebSocket connections through the gateway. After `101 Switching Protocols` nothing is
//! copied raw: both sides are read as WebSocket messages (fragments reassembled, masks
//! removed, at most 16 MiB a message), every message from the upstream is scrubbed and every
//! message from the sandbox goes through the request guard, each direction with one scanner
//! for the whole connection (a value split across frames or messages is still caught), and
//! model usage in the upstream's messages is metered. Compression (`permessage-deflate`) is
//! never negotiated: the gateway removes the offer, and a frame with a reserved bit set ends
//! the connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::context::Ctx;
use crate::meter::Usage;
use crate::scan::{Needles, Scanned, StreamScan};
use crate::Shared;

const MAX_MESSAGE: usize = 16 << 20;

/// A connection whose bytes read are counted (the real byte counts of the audit row, frame
/// headers and all, whether or not a message got through).
struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What one relayed connection did, for its closing audit row.
#[derive(Debug, Default)]
pub struct Totals {
    /// Bytes read from the sandbox and from the upstream (frames included).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Message payload bytes passed on each way.
    pub payload_up: u64,
    pub payload_down: u64,
    pub messages_up: u64,
    pub messages_down: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// How it ended, in words.
    pub ended: String,
    /// The credential a sandbox message carried, when the guard ended the connection.
    pub blocked: Option<String>,
    pub budget_refused: bool,
}

/// What the relay checks.
pub struct Checks {
    pub scrub: Option<Arc<Needles>>,
    pub guard: Option<Arc<Needles>>,
    /// A model route: usage is metered and budgets apply to each new request.
    pub metered: bool,
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.chars().take(120).collect::<String>()),
    }))
}

/// Relays between the sandbox's connection (`client`) and the upstream's until either ends.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    checks: Checks,
    shared: Arc<Shared>,
    ctx: Arc<Ctx>,
    host: String,
) -> Totals
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let read_up = Arc::new(AtomicU64::new(0));
    let read_down = Arc::new(AtomicU64::new(0));
    let client = Counted {
        inner: client,
        read: read_up.clone(),
    };
    let upstream = Counted {
        inner: upstream,
        read: read_down.clone(),
    };
    let mut down = WebSocketStream::from_raw_socket(client, Role::Server, Some(config())).await;
    let mut up = WebSocketStream::from_raw_socket(upstream, Role::Client, Some(config())).await;
    let mut scrub = checks.scrub.map(StreamScan::new);
    let mut guard = checks.guard.map(StreamScan::new);
    let mut t = Totals::default();
    loop {
        tokio::select! {
            msg = down.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        t.ended = format!("the sandbox's side failed: {e}");
                        let _ = up.close(None).await;
                        break;
                    }
                    None => {
                        t.ended = "the sandbox closed the connection".into();
                        let _ = up.close(None).await;
                        break;
                    }
                };
                let payload: Option<&[u8]> = match &msg {
                    Message::Text(s) => Some(s.as_bytes()),
                    Message::Binary(b) => Some(b),
                    Message::Close(Some(f)) => Some(f.reason.as_bytes()),
                    _ => None,
                };
                let Some(payload) = payload else { continue };
                if let Some(g) = guard.as_mut() {
                    if let Scanned::Found(label) = g.check_end(Bytes::copy_from_slice(payload)) {
                        t.blocked = Some(label.clone());
                        t.ended = format!("a sandbox message carried the stored credential `{label}`");
                        let text = format!("Airlock: blocked a message carrying the stored credential `{label}`");
                        let _ = down.send(close(CloseCode::Policy, &text)).await;
                        let _ = up.close(None).await;
                        break;
                    }
                }
                if matches!(msg, Message::Close(_)) {
                    t.ended = "the sandbox closed the connection".into();
                    let _ = up.send(msg).await;
                    finish_close(&mut up, &mut down, scrub.as_mut()).await;
                    break;
                }
                if checks.metered {
                    if let Some(why) = shared.budgets.refusal(&ctx).await {
                        t.budget_refused = true;
                        t.ended = "the model budget is spent".into();
                        let err = serde_json::json!({
                            "type": "error", "status": 429,
                            "error": {"type": "airlock_budget_exceeded", "code": "budget_exceeded", "message": why},
                        });
                        let _ = down.send(Message::Text(Utf8Bytes::from(err.to_string()))).await;
                        let _ = down.send(close(CloseCode::Policy, "Airlock: the model budget is spent")).await;
                        let _ = up.close(None).await;
                        break;
                    }
                }
                t.messages_up += 1;
                t.payload_up += payload.len() as u64;
                if let Err(e) = up.send(msg).await {
                    t.ended = format!("the upstream failed: {e}");
                    let _ = down.send(close(CloseCode::Away, "Airlock: the upstream went away")).await;
                    break;
                }
            }
            msg = up.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        t.ended = format!("the upstream failed: {e}");
                        let _ = down.send(close(CloseCode::Error, "Airlock: the upstream failed")).await;
                        break;
                    }
                    None => {
                        t.ended = "the upstream closed the connection".into();
                        let _ = down.close(None).await;
                        break;
                    }
                };
                let out = match msg {
                    Message::Text(s) => {
                        let clean = scrubbed(scrub.as_mut(), Bytes::from(s));
                        t.payload_down += clean.len() as u64;
                        if checks.metered {
                            meter(&clean, &shared, &ctx, &host, &mut t);
                        }
                        Message::Text(Utf8Bytes::from(String::from_utf8_lossy(&clean).into_owned()))
                    }
                    Message::Binary(b) => {
                        let clean = scrubbed(scrub.as_mut(), b);
                        t.payload_down += clean.len() as u64;
                        Message::Binary(clean)
                    }
                    Message::Close(frame) => {
                        t.ended = "the upstream closed the connection".into();
                        let _ = down.send(Message::Close(frame.map(|f| clean_close(scrub.as_mut(), f)))).await;
                        break;
                    }
                    _ => continue,
                };
                t.messages_down += 1;
                if let Err(e) = down.send(out).await {
                    t.ended = format!("the sandbox's side failed: {e}");
                    let _ = up.close(None).await;
                    break;
                }
            }
        }
    }
    t.bytes_up = read_up.load(Ordering::Relaxed);
    t.bytes_down = read_down.load(Ordering::Relaxed);
    t
}

fn scrubbed(scan: Option<&mut StreamScan>, payload: Bytes) -> Bytes {
    match scan {
        Some(s) => s.scrub_end(payload),
        None => payload,
    }
}

fn clean_close(scan: Option<&mut StreamScan>, f: CloseFrame) -> CloseFrame {
    let reason = scrubbed(scan, Bytes::copy_from_slice(f.reason.as_bytes()));
    CloseFrame {
        code: f.code,
        reason: Utf8Bytes::from(String::from_utf8_lossy(&reason).into_owned()),
    }
}

/// After the sandbox's close: the upstream's answering close goes back, scrubbed.
async fn finish_close<U, C>(
    up: &mut WebSocketStream<U>,
    down: &mut WebSocketStream<C>,
    mut scrub: Option<&mut StreamScan>,
) where
    U: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = up.next().await {
            if let Message::Close(frame) = m {
                let frame = frame.map(|f| clean_close(scrub.as_deref_mut(), f));
                let _ = down.send(Message::Close(frame)).await;
                return;
            }
        }
    })
    .await;
}

/// Usage in one upstream message (the Responses API's `response.completed` carries it).
fn meter(text: &[u8], shared: &Shared, ctx: &Ctx, host: &str, t: &mut Totals) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
        return;
    };
    let mut usage = Usage::default();
    usage.merge(&v);
    if !usage.is_empty() {
        t.input_tokens += usage.input_tokens;
        t.output_tokens += usage.output_tokens;
        shared.meter(ctx, host, usage);
    }
}
