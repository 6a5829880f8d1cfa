//! The gateway's audit writer is bounded: while the database does not take records (here:
//! another process holds SQLite's write lock), at most `audit_backlog` records wait in memory
//! and further requests are refused with a clear 503 rather than served unaudited; once the
//! database is back, requests go through again and every record of a served request is
//! written, the last ones at shutdown.

use std::time::{Duration, Instant};

use airlock_tests::inproc::InProcess;
use airlock_tests::upstream::Upstream;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_log_refuses_egress_instead_of_growing_and_loses_nothing() {
    let key = "sk-backlog-0123456789abcdef";
    let upstream = Upstream::start(key, "unused-git-token").await;
    let mut gw = InProcess::start(
        &upstream.url(),
        &upstream.ca_file,
        key,
        airlock_gateway::GatewaySettings {
            audit_backlog: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(gw.ca_pem.as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(&gw.proxy).unwrap())
        .build()
        .unwrap();
    // A refusal comes as the answer to a request in a tunnel, or, when the client opens a new
    // tunnel (its pooled one was closed), as the answer to the CONNECT, which reqwest does not
    // show: then the proxy's answer is read with a CONNECT of our own.
    let proxy = gw.proxy.clone();
    let get = || async {
        match client.get("https://api.bench.test/small").send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap()),
            Err(e) if e.is_connect() => match connect_answer(&proxy, "api.bench.test:443").await {
                (200, _) => panic!("the tunnel opens, yet the request failed: {e:?}"),
                refused => refused,
            },
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(get().await.0, 200, "the gateway works");

    // Another process takes the database's write lock: the audit writer cannot write.
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", gw.db_path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    // Let the writer take the one record it had, if it had not yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut served = 0;
    let mut refused = None;
    for _ in 0..20 {
        let (status, body) = get().await;
        match status {
            200 => served += 1,
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let refused = refused.expect("requests went on being served with the audit log stalled");
    assert!(
        refused.contains("behind on writing its audit log"),
        "{refused}"
    );
    assert!(
        served <= 5,
        "{served} requests were served past the backlog of 5"
    );

    // The database is back: requests are served again.
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get().await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "requests stayed refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = get().await;
    assert_eq!(status, 200);

    // Shutdown writes what waits; every served request has its row.
    gw.stop().await;
    let rows = gw
        .store
        .search_audit("egress.request", None, 1000)
        .await
        .unwrap()
        .entries;
    let requests = rows.iter().filter(|r| r.action == "egress.request").count();
    assert!(
        requests >= 1 + served + 2,
        "{requests} egress.request rows for {} served requests",
        1 + served + 2
    );
    assert!(gw.store.verify_audit().await.unwrap().is_intact());
}

/// The proxy's answer to `CONNECT target` with the credentials in `proxy`
/// (`http://USER:TOKEN@HOST:PORT`): its status and body.
async fn connect_answer(proxy: &str, target: &str) -> (u16, String) {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = proxy.strip_prefix("http://").unwrap();
    let (auth, addr) = rest.split_once('@').unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(auth);
    tcp.write_all(
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {basic}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break;
                }
            }
        }
    });
    read.await.expect("the proxy answered the CONNECT");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
