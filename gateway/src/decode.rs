//! Content and transfer codings undone, so that what crosses the gateway can be scanned.
//!
//! The gateway asks upstreams for `Accept-Encoding: identity`, but an upstream may compress
//! anyway (with `Content-Encoding`, or with a transfer coding before `chunked`), and a
//! sandbox may send a compressed body. Every coding a client could decode (gzip, deflate,
//! br, zstd, stacked in any order) is decoded as the body streams, and the decoded body is
//! what goes on, without the coding headers; a coding the gateway cannot decode is refused,
//! never passed on unscanned. Decoding pulls at the reader's pace with fixed buffers (and a
//! zstd window of at most 8 MiB), so a decompression bomb costs bounded memory; a stream that
//! fails to decode ends in an error, never in raw bytes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::Bytes;
use futures_util::Stream;
use http::header::{HeaderMap, CONTENT_ENCODING, TRANSFER_ENCODING};
use http_body::{Body, Frame};
use tokio::io::{AsyncBufRead, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::{BoxBody, BoxError};

const BUFFER: usize = 64 * 1024;
/// zstd frames may ask for windows of up to 2 GiB; more than this is refused.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// zlib-wrapped deflate, as HTTP defines it.
    Deflate,
    Br,
    Zstd,
}

/// The codings applied to a message's body, in the order they were applied: its
/// `Content-Encoding`, then its `Transfer-Encoding` (without `chunked`, which hyper undoes).
/// `Err` names a coding the gateway cannot decode.
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, String> {
    let mut out = Vec::new();
    for name in [CONTENT_ENCODING, TRANSFER_ENCODING] {
        for value in headers.get_all(&name) {
            let value = String::from_utf8_lossy(value.as_bytes());
            for token in value.split(',') {
                let t = token.trim().to_ascii_lowercase();
                let t = t.split(';').next().unwrap_or("").trim().to_string();
                match t.as_str() {
                    "" | "identity" => {}
                    "chunked" if name == TRANSFER_ENCODING => {}
                    "gzip" | "x-gzip" => out.push(Coding::Gzip),
                    "deflate" => out.push(Coding::Deflate),
                    "br" => out.push(Coding::Br),
                    "zstd" => out.push(Coding::Zstd),
                    other => return Err(other.chars().take(40).collect()),
                }
            }
        }
    }
    Ok(out)
}

/// The data of a body as a byte stream; its trailers are kept aside for later.
struct Source<B> {
    body: B,
    trailers: Arc<Mutex<Option<HeaderMap>>>,
}

impl<B> Stream for Source<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(io::Error::other(e.into()))))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => return Poll::Ready(Some(Ok(d))),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            *self.trailers.lock().expect("trailers") = Some(t);
                        }
                    }
                },
            }
        }
    }
}

type Reader = Pin<Box<dyn AsyncBufRead + Send>>;

/// A decoded body: the data, then the original trailers.
struct Decoded {
    stream: ReaderStream<Reader>,
    trailers: Arc<Mutex<Option<HeaderMap>>>,
    done: bool,
}

impl Body for Decoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(d))) => Poll::Ready(Some(Ok(Frame::data(d)))),
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(DecodeError(e.to_string())))))
            }
            Poll::Ready(None) => {
                self.done = true;
                let t = self.trailers.lock().expect("trailers").take();
                Poll::Ready(t.map(|t| Ok(Frame::trailers(t))))
            }
        }
    }
}

#[derive(Debug)]
pub struct DecodeError(String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the compressed body does not decode: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// `body` with `codings` undone (the last applied is undone first).
pub fn decoded<B>(body: B, codings: &[Coding]) -> BoxBody
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let trailers = Arc::new(Mutex::new(None));
    let source = Source {
        body,
        trailers: trailers.clone(),
    };
    let mut reader: Reader = Box::pin(StreamReader::new(source));
    for coding in codings.iter().rev() {
        reader = match coding {
            Coding::Gzip => {
                let mut d = GzipDecoder::new(reader);
                d.multiple_members(true);
                Box::pin(BufReader::with_capacity(BUFFER, d))
            }
            Coding::Deflate => Box::pin(BufReader::with_capacity(BUFFER, ZlibDecoder::new(reader))),
            Coding::Br => Box::pin(BufReader::with_capacity(BUFFER, BrotliDecoder::new(reader))),
            Coding::Zstd => Box::pin(BufReader::with_capacity(
                BUFFER,
                ZstdDecoder::with_params(
                    reader,
                    &[async_compression::zstd::DParameter::window_log_max(
                        ZSTD_WINDOW_LOG_MAX,
                    )],
                ),
            )),
        };
    }
    Decoded {
        stream: ReaderStream::with_capacity(reader, BUFFER),
        trailers,
        done: false,
    }
    .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
    use http_body_util::{BodyExt, Full};
    use tokio::io::AsyncWriteExt;

    async fn compress(c: Coding, data: &[u8]) -> Vec<u8> {
        macro_rules! enc {
            ($e:expr) => {{
                let mut e = $e;
                e.write_all(data).await.unwrap();
                e.shutdown().await.unwrap();
                e.into_inner()
            }};
        }
        match c {
            Coding::Gzip => enc!(GzipEncoder::new(Vec::new())),
            Coding::Deflate => enc!(ZlibEncoder::new(Vec::new())),
            Coding::Br => enc!(BrotliEncoder::new(Vec::new())),
            Coding::Zstd => enc!(ZstdEncoder::new(Vec::new())),
        }
    }

    async fn decode_all(data: Vec<u8>, codings: &[Coding]) -> Result<Vec<u8>, String> {
        let body = Full::new(Bytes::from(data)).map_err(|e| -> BoxError { match e {} });
        let mut b = decoded(body, codings);
        let mut out = Vec::new();
        while let Some(f) = b.frame().await {
            let f = f.map_err(|e| e.to_string())?;
            if let Ok(d) = f.into_data() {
                out.extend_from_slice(&d);
            }
        }
        Ok(out)
    }

    #[test]
    fn codings_are_read_in_the_order_they_were_applied() {
        let mut h = HeaderMap::new();
        h.append(CONTENT_ENCODING, "gzip, br".parse().unwrap());
        h.append(TRANSFER_ENCODING, "zstd, chunked".parse().unwrap());
        assert_eq!(
            codings(&h),
            Ok(vec![Coding::Gzip, Coding::Br, Coding::Zstd])
        );
        let mut h = HeaderMap::new();
        h.append(CONTENT_ENCODING, "identity".parse().unwrap());
        assert_eq!(codings(&h), Ok(vec![]));
        h.append(CONTENT_ENCODING, "compress".parse().unwrap());
        assert_eq!(codings(&h), Err("compress".into()));
    }

    #[tokio::test]
    async fn every_coding_and_stacks_of_them_decode() {
        let text = b"Bearer sk-secret-123 ".repeat(1000);
        for c in [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd] {
            let z = compress(c, &text).await;
            assert_eq!(decode_all(z, &[c]).await.unwrap(), text, "{c:?}");
        }
        let stacked = compress(
            Coding::Zstd,
            &compress(Coding::Br, &compress(Coding::Gzip, &text).await).await,
        )
        .await;
        let out = decode_all(stacked, &[Coding::Gzip, Coding::Br, Coding::Zstd]).await;
        assert_eq!(out.unwrap(), text);
        // Two gzip members, as `cat a.gz b.gz` gives.
        let mut two = compress(Coding::Gzip, b"first ").await;
        two.extend(compress(Coding::Gzip, b"second").await);
        assert_eq!(
            decode_all(two, &[Coding::Gzip]).await.unwrap(),
            b"first second"
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_decode_is_an_error_not_raw_bytes() {
        let err = decode_all(b"not gzip at all".to_vec(), &[Coding::Gzip]).await;
        assert!(err.is_err());
    }

    #[tokio::test]
    async fn a_bomb_streams_in_small_pieces() {
        // 64 MiB of zeros compress to about 64 KiB; decoding hands it out a buffer at a time.
        let zeros = vec![0u8; 64 << 20];
        let z = compress(Coding::Gzip, &zeros).await;
        assert!(z.len() < 1 << 20);
        let body = Full::new(Bytes::from(z)).map_err(|e| -> BoxError { match e {} });
        let mut b = decoded(body, &[Coding::Gzip]);
        let mut total = 0;
        while let Some(f) = b.frame().await {
            let d = f.unwrap().into_data().unwrap();
            assert!(d.len() <= BUFFER);
            total += d.len();
        }
        assert_eq!(total, 64 << 20);
    }
}
