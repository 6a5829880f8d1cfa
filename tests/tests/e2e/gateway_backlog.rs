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
    let get = || async {
        let r = client
            .get("https://api.bench.test/small")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
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
