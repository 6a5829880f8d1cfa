//! The gateway's own way out through a company's HTTP proxy (`gateway.upstream_proxy`):
//! where the network allows no direct connection, every upstream connection (routes,
//! passthrough tunnels) is a `CONNECT` tunnel through that proxy, except to the hosts of
//! `gateway.no_proxy` (loopback by default: the local git endpoint, a model on the host).
//!
//! The proxy changes where bytes go, not what is allowed: a host a sandbox names is still
//! resolved here first and refused if any of its addresses is internal (`addr`), and TLS
//! to the upstream is still verified end to end (a TLS-inspecting proxy's CA must be in
//! `gateway.extra_ca_file`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most a proxy's answer to `CONNECT` may be.
const MAX_ANSWER: usize = 8 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct UpstreamProxy {
    /// `host:port` of the proxy.
    authority: String,
    /// Hosts reached directly (exact, or a suffix after a dot).
    no_proxy: Vec<String>,
}

impl UpstreamProxy {
    /// `http://HOST:PORT` (no user name or password: those would be a credential in the
    /// configuration), and the hosts to reach directly.
    pub fn new(url: &str, no_proxy: &[String]) -> Result<UpstreamProxy, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: expected http://HOST:PORT"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
            return Err(format!("`{url}`: expected http://HOST:PORT"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(UpstreamProxy {
            authority,
            no_proxy: no_proxy
                .iter()
                .map(|h| h.trim().trim_start_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        })
    }

    /// Whether `host` is reached without the proxy.
    pub fn bypasses(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.no_proxy
            .iter()
            .any(|n| host == *n || host.ends_with(&format!(".{n}")))
    }

    /// A tunnel to `host:port` through the proxy, ready for TLS (or plain HTTP).
    pub async fn tunnel(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        let target = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let io = |m: String| std::io::Error::other(m);
        let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                io(format!(
                    "the upstream proxy {} did not answer within 15 s",
                    self.authority
                ))
            })?
            .map_err(|e| {
                io(format!(
                    "cannot reach the upstream proxy {}: {e}",
                    self.authority
                ))
            })?;
        let _ = s.set_nodelay(true);
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        // Read the answer's head byte by byte: what follows it belongs to the tunnel.
        let mut head = Vec::with_capacity(256);
        let read = async {
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= MAX_ANSWER || s.read(&mut byte).await? == 0 {
                    return Err(io(
                        "the upstream proxy closed the connection or sent too much".into(),
                    ));
                }
                head.push(byte[0]);
            }
            Ok(())
        };
        tokio::time::timeout(CONNECT_TIMEOUT, read)
            .await
            .map_err(|_| io("the upstream proxy did not answer CONNECT within 15 s".into()))??;
        let status = String::from_utf8_lossy(&head);
        let line = status.lines().next().unwrap_or("");
        let ok = line.starts_with("HTTP/1.") && line.split_whitespace().nth(1) == Some("200");
        if !ok {
            return Err(io(format!(
                "the upstream proxy refused CONNECT {target}: {}",
                line.chars().take(120).collect::<String>()
            )));
        }
        Ok(s)
    }
}

/// A connector that goes through the upstream proxy when there is one (see the module);
/// `public_only` connections have their host checked for internal addresses first.
#[derive(Clone)]
pub struct ViaProxy<C> {
    pub direct: C,
    pub proxy: Option<Arc<UpstreamProxy>>,
    pub public_only: bool,
}

impl<C> tower_service::Service<Uri> for ViaProxy<C>
where
    C: tower_service::Service<Uri, Response = TokioIo<TcpStream>> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or("").to_string();
        let proxy = self.proxy.clone().filter(|p| !p.bypasses(&host));
        let Some(proxy) = proxy else {
            let connecting = self.direct.call(uri);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let public_only = self.public_only;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        Box::pin(async move {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if public_only {
                crate::addr::resolve_public(bare, port)
                    .await
                    .map_err(std::io::Error::other)?;
            }
            Ok(TokioIo::new(proxy.tunnel(bare, port).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_url_is_an_address_without_credentials() {
        let none: Vec<String> = vec![];
        assert_eq!(
            UpstreamProxy::new("http://proxy.corp:3128", &none)
                .unwrap()
                .authority,
            "proxy.corp:3128"
        );
        assert_eq!(
            UpstreamProxy::new("http://proxy.corp/", &none)
                .unwrap()
                .authority,
            "proxy.corp:80"
        );
        for bad in [
            "https://proxy:3128",
            "proxy:3128",
            "http://u:p@proxy:3128",
            "http://proxy:3128/x",
            "http://",
        ] {
            assert!(UpstreamProxy::new(bad, &none).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_proxy_hosts_match_exactly_or_as_a_domain_suffix() {
        let p = UpstreamProxy::new(
            "http://proxy:3128",
            &[
                "localhost".into(),
                "127.0.0.1".into(),
                ".corp.example".into(),
                "::1".into(),
            ],
        )
        .unwrap();
        assert!(p.bypasses("localhost") && p.bypasses("127.0.0.1") && p.bypasses("[::1]"));
        assert!(p.bypasses("git.corp.example") && p.bypasses("CORP.example"));
        assert!(!p.bypasses("evilcorp.example") && !p.bypasses("api.openai.com"));
    }

    /// A proxy that answers CONNECT with 200 and then echoes: the tunnel carries bytes both
    /// ways, and a refusal is an error that says what the proxy said.
    #[tokio::test]
    async fn a_tunnel_goes_through_connect_and_a_refusal_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        s.read_exact(&mut b).await.unwrap();
                        head.push(b[0]);
                    }
                    let head = String::from_utf8(head).unwrap();
                    if head.starts_with("CONNECT allowed.example:443 HTTP/1.1\r\n") {
                        s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await
                            .unwrap();
                        let mut buf = [0u8; 5];
                        s.read_exact(&mut buf).await.unwrap();
                        s.write_all(&buf).await.unwrap();
                    } else {
                        s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                            .await
                            .unwrap();
                    }
                });
            }
        });
        let p = UpstreamProxy::new(&format!("http://{at}"), &[]).unwrap();
        let mut t = p.tunnel("allowed.example", 443).await.unwrap();
        t.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        t.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        let refused = p
            .tunnel("other.example", 443)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "the upstream proxy refused CONNECT other.example:443: HTTP/1.1 403 Forbidden"
        );
    }
}
