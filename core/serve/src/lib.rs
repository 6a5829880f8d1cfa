//! Airlock's HTTP server loop, for peers that may be hostile: axum's router on hyper, with
//! what `axum::serve` does not set. A connection must send its request head within
//! [`Limits::header_timeout`] (slow-loris connections, and connections that send nothing,
//! are closed), a request body must arrive within [`Limits::body_timeout`], at most
//! [`Limits::max_connections`] connections are open at once and at most
//! [`Limits::per_peer`] from one address (more are closed when accepted), and each handler
//! knows the peer's address (`ConnectInfo`). The public server of `airlock up` and the
//! endpoint sandboxes connect to both serve through here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tower::ServiceExt as _;

/// What one server allows its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may take to send a request's head (and an idle keep-alive
    /// connection to start its next request).
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive, once its head has.
    pub body_timeout: Duration,
    /// Connections open at once; the next ones are closed when accepted.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub per_peer: usize,
    /// How long the server waits for open requests when it stops.
    pub drain: Duration,
}

impl Limits {
    /// The server people, chat services and GitHub reach. One address may hold every
    /// connection: behind a reverse proxy, all peers are the proxy.
    pub const PUBLIC: Limits = Limits {
        // GitHub, Slack and Discord send a request's head at once; 8 s leaves room for a
        // slow link and closes a slow-loris connection well within 10 s.
        header_timeout: Duration::from_secs(8),
        body_timeout: Duration::from_secs(30),
        max_connections: 1024,
        per_peer: 1024,
        drain: Duration::from_secs(10),
    };

    /// The egress gateway, which sandboxes reach: a sandbox's tools open many connections
    /// (package managers in parallel, tunnels that stay open), so the per-sandbox bound is
    /// generous but bounded; idle keep-alive connections get longer than the public server's.
    /// Bodies have no timeout: an upload is as slow as its upstream.
    pub const GATEWAY: Limits = Limits {
        header_timeout: Duration::from_secs(30),
        body_timeout: Duration::MAX,
        max_connections: 8192,
        per_peer: 512,
        drain: Duration::from_secs(5),
    };

    /// The endpoint sandboxd connects to: one WebSocket per sandbox (a second while it
    /// reconnects), so a sandbox that opens more is cut off at a few.
    pub const SANDBOX_ENDPOINT: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        max_connections: 16_384,
        per_peer: 4,
        drain: Duration::from_secs(2),
    };
}

/// Open connections, in all and per address: each accepted connection takes a [`Slot`]
/// first, and gives it back when the slot is dropped (hold it for as long as anything of
/// the connection lives: an upgraded tunnel too).
pub struct Connections {
    per_peer_max: usize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    total: Arc<tokio::sync::Semaphore>,
}

/// One open connection's place in [`Connections`].
pub struct Slot {
    open: Arc<Connections>,
    peer: IpAddr,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl Connections {
    pub fn new(max_connections: usize, per_peer: usize) -> Arc<Connections> {
        Arc::new(Connections {
            per_peer_max: per_peer,
            per_peer: Mutex::new(HashMap::new()),
            total: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        })
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, &'static str> {
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            return Err("the server's connection limit is reached");
        };
        let mut map = self.per_peer.lock().expect("per-peer counts");
        let n = map.entry(peer).or_insert(0);
        if *n >= self.per_peer_max {
            return Err("this address's connection limit is reached");
        }
        *n += 1;
        Ok(Slot {
            open: self.clone(),
            peer,
            _total: permit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.open.per_peer.lock().expect("per-peer counts");
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown`, then lets open requests
/// finish (up to [`Limits::drain`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let open = Connections::new(limits.max_connections, limits.per_peer);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match open.take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::warn!(%peer, "closed a connection: {why}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // The first bytes decide HTTP/1 or HTTP/2 before either's timers run: a
            // connection that sends nothing at all is closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    tracing::debug!(%peer, "closed a connection that sent nothing");
                    return;
                }
            }
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("stopped with requests still open after {:?}", limits.drain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const QUICK: Limits = Limits {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        max_connections: 6,
        per_peer: 6,
        drain: Duration::from_millis(100),
    };

    async fn start(limits: Limits) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                format!("hello {}", peer.ip())
            }),
        );
        tokio::spawn(serve(listener, app, limits, std::future::pending()));
        addr
    }

    /// When the server closes `c` (reading whatever it sends first).
    async fn closed_within(mut c: TcpStream, secs: u64) -> Option<Instant> {
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(_) => continue,
                }
            }
        })
        .await
        .ok()
    }

    async fn get(addr: SocketAddr) -> Result<String, reqwest::Error> {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .get(format!("http://{addr}/"))
            .send()
            .await?
            .text()
            .await
    }

    /// A connection that sends nothing, and one whose head never ends, are both closed
    /// after the header timeout; the handler knows who asked.
    #[tokio::test]
    async fn silent_and_slow_connections_are_closed_after_the_header_timeout() {
        let addr = start(QUICK).await;
        assert_eq!(get(addr).await.unwrap(), "hello 127.0.0.1");
        let started = Instant::now();
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        for (what, c) in [("silent", silent), ("slow", slow)] {
            let after = closed_within(c, 5).await;
            let after = after
                .unwrap_or_else(|| panic!("the {what} connection is still open after 5 s"))
                - started;
            assert!(
                after >= Duration::from_millis(300),
                "{what}: closed after {after:?}"
            );
        }
    }

    /// Beyond `max_connections`, a new connection is closed at once; once one closes, the
    /// server answers again. `per_peer` bounds one address alike.
    #[tokio::test]
    async fn connections_beyond_the_limits_are_closed_at_once() {
        for limits in [
            Limits {
                header_timeout: Duration::from_secs(30),
                ..QUICK
            },
            Limits {
                header_timeout: Duration::from_secs(30),
                max_connections: 100,
                per_peer: 6,
                ..QUICK
            },
        ] {
            let addr = start(limits).await;
            let mut held = Vec::new();
            for _ in 0..6 {
                let mut c = TcpStream::connect(addr).await.unwrap();
                // A byte, so each is past the first check and holds its place.
                c.write_all(b"G").await.unwrap();
                held.push(c);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let extra = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            let after = closed_within(extra, 2)
                .await
                .expect("the 7th connection stays open")
                - started;
            assert!(after < Duration::from_secs(1), "{after:?}");
            assert!(
                get(addr).await.is_err(),
                "a request got through a full server"
            );
            held.pop();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(get(addr).await.unwrap(), "hello 127.0.0.1");
        }
    }
}
