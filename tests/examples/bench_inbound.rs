//! Benchmark (not a test): the inbound side under load and abuse, in one run (issue 16).
//!
//!     cargo build --workspace --bins && AIRLOCK_TEST_BIN=target/debug/airlock \
//!       cargo run -p airlock-tests --example bench_inbound
//!
//! Prints, for signed GitHub deliveries posted at 50, 200 and 500 per second (open loop:
//! each request's latency counts from when it was due), the acknowledgement latency p50 and
//! p99 of the real server (SQLite) next to a bare axum handler on the same machine that reads
//! the body and answers 202; the same for 200 deliveries posted at once; the server's RSS
//! idle and at its peak under 16 concurrent unsigned 24 MB posts; and how long a connection
//! that never finishes its request head stays open. Needs root and Docker (the server sets
//! up its sandbox network) but no base image.

use std::time::{Duration, Instant};

use airlock_tests::github::sign_webhook;
use airlock_tests::stack::{Stack, WEBHOOK_SECRET};
use airlock_tests::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pct(mut ms: Vec<f64>, p: f64) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms[(((ms.len() as f64) * p).ceil() as usize).clamp(1, ms.len()) - 1]
}

/// A comment that mentions nobody: stored and acknowledged, then ignored.
fn delivery_body(n: usize) -> Vec<u8> {
    let mut p = airlock_tests::github::comment_fixture("issue_comment.created");
    p["comment"]["id"] = serde_json::json!(1_000_000 + n as u64);
    p["comment"]["body"] = serde_json::json!(format!("an ordinary comment {n}"));
    serde_json::to_vec(&p).unwrap()
}

/// Posts `count` signed deliveries to `url`, `rate` per second (0: all at once); the
/// latency of each from when it was due, in ms.
async fn load(url: &str, count: usize, rate: u32, first: usize) -> Vec<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for i in 0..count {
        let body = delivery_body(first + i);
        let sig = sign_webhook(WEBHOOK_SECRET, &body);
        let due = if rate == 0 {
            start
        } else {
            start + Duration::from_secs_f64(i as f64 / rate as f64)
        };
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let r = client
                .post(url)
                .header("X-GitHub-Event", "issue_comment")
                .header("X-GitHub-Delivery", ulid::Ulid::new().to_string())
                .header("X-Hub-Signature-256", sig)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            due.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A bare axum handler: reads the body, answers 202.
async fn bare() -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/github/webhook",
        post(|body: axum::body::Bytes| async move {
            let _ = body.len();
            axum::http::StatusCode::ACCEPTED
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/github/webhook")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut stack = Stack::new(
        Engine::Sqlite,
        vec![],
        "acme/web",
        &[("README", "hi\n")],
        |_| {},
    )
    .await;
    stack.start();
    let url = format!("{}/github/webhook", stack.url());
    let base = bare().await;
    // Warm both up.
    load(&url, 20, 0, 0).await;
    load(&base, 20, 0, 0).await;
    println!("acknowledgement latency, signed deliveries (ms)");
    println!(
        "{:>12} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "load", "p50", "p99", "bare p50", "bare p99", "p99 ratio"
    );
    let mut n = 100;
    for (label, count, rate) in [
        ("50/s", 150usize, 50u32),
        ("200/s", 600, 200),
        ("500/s", 1500, 500),
        ("200 at once", 200, 0),
    ] {
        let ours = load(&url, count, rate, n).await;
        n += count;
        let theirs = load(&base, count, rate, 0).await;
        let (p50, p99) = (pct(ours.clone(), 0.5), pct(ours, 0.99));
        let (b50, b99) = (pct(theirs.clone(), 0.5), pct(theirs, 0.99));
        println!(
            "{label:>12} {p50:>10.1} {p99:>10.1} {b50:>10.1} {b99:>10.1} {:>8.1}x",
            p99 / b99
        );
    }

    // Memory under unsigned large posts.
    let pid = stack.server.as_ref().unwrap().child.id();
    let idle = airlock_tests::rss_mb(pid);
    let (peak, _) = airlock_tests::unsigned_flood(&url, pid, 16, 24 << 20).await;
    println!(
        "RSS: idle {idle} MB, peak under 16 unsigned 24 MB posts {peak} MB (goal: at most 100 MB)"
    );

    // A connection that never finishes its request head.
    let addr = stack.url().trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"POST /github/webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => continue,
        }
    }
    println!(
        "a slow-loris connection was closed after {:.1} s (goal: within 10 s)",
        t0.elapsed().as_secs_f64()
    );
}
