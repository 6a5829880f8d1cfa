//! A body that streams through the gateway frame by frame (never buffered whole) while it is
//! counted, scanned for credential values (guard: stop; scrub: replace) in its data and its
//! trailers, and metered; the finisher runs once when the body ends, fails, or is dropped
//! half-way.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

use crate::meter::Meter;
use crate::scan::{Needles, Scanned, StreamScan};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What to do with credential values found in the stream.
pub enum Scan {
    None,
    /// Request guard: stop the body and name the credential in the flag.
    Guard(StreamScan, Arc<Mutex<Option<String>>>),
    /// Response scrubbing.
    Scrub(StreamScan),
}

/// Called once at the end with the meter (if any).
pub type Finisher = Box<dyn FnOnce(Option<Meter>) + Send>;

pub struct Observed<B> {
    inner: B,
    scan: Scan,
    meter: Option<Meter>,
    count: Arc<AtomicU64>,
    finisher: Option<Finisher>,
    /// Trailers held while the scanner's held-back bytes go out first.
    trailers: Option<http::HeaderMap>,
    ended: bool,
}

#[derive(Debug)]
pub struct Blocked;

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body carried a stored credential value")
    }
}

impl std::error::Error for Blocked {}

impl<B> Observed<B> {
    pub fn new(inner: B, scan: Scan, meter: Option<Meter>, count: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            scan,
            meter,
            count,
            finisher: None,
            trailers: None,
            ended: false,
        }
    }

    pub fn on_end(mut self, f: Finisher) -> Self {
        self.finisher = Some(f);
        self
    }

    fn finish(&mut self) {
        self.ended = true;
        if let Some(f) = self.finisher.take() {
            f(self.meter.take());
        }
    }

    /// What was held back, at the end of the data; `Err` when the guard trips on it.
    fn held_back(&mut self) -> Result<Bytes, String> {
        match &mut self.scan {
            Scan::None => Ok(Bytes::new()),
            Scan::Scrub(s) => Ok(s.scrub_end(Bytes::new())),
            Scan::Guard(s, _) => match s.check_end(Bytes::new()) {
                Scanned::Pass(b) => Ok(b),
                Scanned::Found(label) => Err(label),
            },
        }
    }

    fn trip(&mut self, label: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Scan::Guard(_, flag) = &self.scan {
            *flag.lock().expect("guard flag") = Some(label);
        }
        self.finish();
        Poll::Ready(Some(Err(Box::new(Blocked))))
    }

    /// Trailers, scrubbed (values replaced, names that carry a value dropped) or checked.
    fn trailers(&mut self, mut t: http::HeaderMap) -> Result<http::HeaderMap, String> {
        match &self.scan {
            Scan::None => Ok(t),
            Scan::Guard(s, _) => {
                let n = s.needles().clone();
                for (name, value) in &t {
                    let found = n
                        .find(name.as_str().as_bytes())
                        .or_else(|| n.find(value.as_bytes()));
                    if let Some(label) = found {
                        return Err(label);
                    }
                }
                Ok(t)
            }
            Scan::Scrub(s) => {
                scrub_headers(s.needles(), &mut t);
                Ok(t)
            }
        }
    }
}

/// Headers with every value replaced where it holds a credential value, and every header
/// whose name holds one dropped.
pub fn scrub_headers(n: &std::sync::Arc<Needles>, headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| n.redact(k.as_str().as_bytes()).is_some())
        .cloned()
        .collect();
    for k in names {
        headers.remove(k);
    }
    for value in headers.values_mut() {
        if let Some(clean) = n.redact(value.as_bytes()) {
            *value = http::HeaderValue::from_bytes(&clean)
                .unwrap_or(http::HeaderValue::from_static("[REDACTED]"));
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(t) = this.trailers.take() {
                return match this.trailers(t) {
                    Ok(t) => {
                        this.finish();
                        Poll::Ready(Some(Ok(Frame::trailers(t))))
                    }
                    Err(label) => this.trip(label),
                };
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let tail = match this.held_back() {
                        Ok(t) => t,
                        Err(label) => return this.trip(label),
                    };
                    this.finish();
                    return Poll::Ready((!tail.is_empty()).then(|| Ok(Frame::data(tail))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        let tail = match this.held_back() {
                            Ok(t) => t,
                            Err(label) => return this.trip(label),
                        };
                        this.trailers = Some(trailers);
                        if tail.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    Err(_) => continue,
                },
            };
            this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some(m) = &mut this.meter {
                m.feed(&data);
            }
            let out = match &mut this.scan {
                Scan::None => data,
                Scan::Scrub(s) => s.scrub(data),
                Scan::Guard(s, _) => match s.check(data) {
                    Scanned::Pass(b) => b,
                    Scanned::Found(label) => return this.trip(label),
                },
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let nothing_held = match &self.scan {
            Scan::None => true,
            Scan::Guard(s, _) | Scan::Scrub(s) => s.is_empty(),
        };
        (self.ended || (self.inner.is_end_stream() && nothing_held)) && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.scan {
            // The guard only holds bytes back; the total is the inner body's.
            Scan::None | Scan::Guard(..) => self.inner.size_hint(),
            Scan::Scrub(_) => http_body::SizeHint::default(),
        }
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        if !self.ended {
            self.finish();
        }
    }
}
