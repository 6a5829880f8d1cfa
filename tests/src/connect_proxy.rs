//! A company's HTTP proxy, as far as the gateway sees it: `CONNECT host:port` tunnels, each
//! target recorded; targets on `refused_port` get 403, as a proxy's policy would answer.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct ConnectProxy {
    pub port: u16,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub async fn start(refused_port: u16) -> ConnectProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = targets.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if client.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let target = head
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or("")
                        .to_string();
                    seen.lock().unwrap().push(target.clone());
                    let refused = target.ends_with(&format!(":{refused_port}"));
                    let upstream = if refused || target.is_empty() {
                        None
                    } else {
                        tokio::net::TcpStream::connect(&target).await.ok()
                    };
                    let Some(mut upstream) = upstream else {
                        let _ = client
                            .write_all(b"HTTP/1.1 403 Forbidden by policy\r\n\r\n")
                            .await;
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        ConnectProxy { port, targets }
    }

    /// Every `CONNECT` target so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}
