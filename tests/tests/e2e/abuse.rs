//! Abusive connections from outside: a request head that never ends (slow loris) is closed
//! after the server's header timeout, and the server keeps answering everyone else.

use std::time::{Duration, Instant};

use airlock_tests::{Engine, Install, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_and_the_server_keeps_answering() {
    let mut install = Install::new(Engine::Sqlite).await;
    Server::configure(&mut install);
    install.ok(&["migrate"]);
    install.add_admin();
    let server = Server::start(&install);
    let addr = format!("127.0.0.1:{}", server.port);
    // Fifty connections that start a request and never finish its head (none of them used
    // to be closed in 40 s).
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"POST /github/webhook HTTP/1.1\r\nHost: airlock\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(c);
    }
    // Meanwhile, the server answers others.
    let r = reqwest::get(format!("http://{addr}/login")).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut closed_after = Vec::new();
    for mut c in slow {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    // A 408 may come before the close.
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(read.is_ok(), "a slow connection was still open after 30 s");
        closed_after.push(started.elapsed());
    }
    let last = closed_after.iter().max().unwrap();
    assert!(
        *last < Duration::from_secs(20),
        "slow connections closed after {last:?}"
    );
    eprintln!("50 slow-loris connections closed within {last:?}");
    let r = reqwest::get(format!("http://{addr}/login")).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(server);
}
