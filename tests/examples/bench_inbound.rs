//! Benchmark (not a test): the inbound side under load and abuse, in one run (issue 16).
//!
//!     cargo build --workspace --bins && AIRLOCK_TEST_BIN=target/debug/airlock \
//!       cargo run -p airlock-tests --example bench_inbound
//!
//! Prints, for signed GitHub deliveries posted at 50, 200 and 500 per second (open loop:
//! each request's latency counts from when it was due), the acknowledgement latency p50 and
//! p99 of the real server (SQLite) next to a bare axum handler on the same machine that reads
//! the body and answers 202 (in a process of its own; three rounds each, in turn, five
//! seconds of load per round), for ordinary comments (recorded as needing nothing when
//! acknowledged) and for label events (stored, then handled); the same for 200 deliveries
//! posted at once; the server's RSS idle and at its peak under 16 concurrent unsigned 24 MB
//! posts (before the load), and after the load; and how long a connection
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

/// What is posted: most of what GitHub sends an installation needs nothing (an ordinary
/// comment: recorded as handled when it is acknowledged); a label event is stored, then
/// claimed, handled (no trigger matches) and marked after the acknowledgement.
#[derive(Clone, Copy)]
enum Kind {
    Comment,
    Labeled,
}

fn delivery_body(kind: Kind, n: usize) -> (&'static str, Vec<u8>) {
    match kind {
        Kind::Comment => {
            let mut p = airlock_tests::github::comment_fixture("issue_comment.created");
            p["comment"]["id"] = serde_json::json!(1_000_000 + n as u64);
            p["comment"]["body"] = serde_json::json!(format!("an ordinary comment {n}"));
            ("issue_comment", serde_json::to_vec(&p).unwrap())
        }
        Kind::Labeled => {
            let mut p = airlock_tests::github::event_fixture("issues.labeled");
            p["issue"]["number"] = serde_json::json!(1_000_000 + n as u64);
            ("issues", serde_json::to_vec(&p).unwrap())
        }
    }
}

/// Posts `count` signed deliveries to `url`, `rate` per second (0: all at once); the
/// latency of each from when it was due, in ms.
async fn load(url: &str, kind: Kind, count: usize, rate: u32, first: usize) -> Vec<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for i in 0..count {
        let (event, body) = delivery_body(kind, first + i);
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
                .header("X-GitHub-Event", event)
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

/// A bare axum handler: reads the body, answers 202. It runs in a process of its own (this
/// program again, with `--bare`), as the server does, so neither shares the load client's
/// threads.
async fn serve_bare() {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/github/webhook",
        post(|body: axum::body::Bytes| async move {
            let _ = body.len();
            axum::http::StatusCode::ACCEPTED
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap()
}

/// Starts the bare handler's process; its URL, and the child (killed when dropped).
fn bare() -> (String, KillOnDrop) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--bare")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (
        format!("http://{}/github/webhook", line.trim()),
        KillOnDrop(child),
    )
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rounds per load, taken in turn (ours, bare, ours, bare, ...) so that a noisy moment of
/// the machine falls on both; percentiles are over all rounds' samples.
const ROUNDS: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--bare") {
        return serve_bare().await;
    }
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
    let (base, _bare) = bare();
    // Warm both up.
    load(&url, Kind::Comment, 20, 0, 0).await;
    load(&base, Kind::Comment, 20, 0, 0).await;
    // Memory under unsigned large posts, first: on the server as it runs before a load has
    // grown its allocator's pools (what the load leaves is printed after it).
    let pid = stack.server.as_ref().unwrap().child.id();
    let idle = airlock_tests::rss_mb(pid);
    let (peak, _) = airlock_tests::unsigned_flood(&url, pid, 16, 24 << 20).await;
    println!(
        "RSS: idle {idle} MB, peak under 16 unsigned 24 MB posts {peak} MB (goal: at most 100 MB)"
    );
    println!("acknowledgement latency, signed deliveries (ms)");
    println!(
        "{:>18} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "load", "p50", "p99", "bare p50", "bare p99", "p99 ratio"
    );
    let mut n = 100;
    for (label, kind, count, rate) in [
        ("50/s", Kind::Comment, 250usize, 50u32),
        ("200/s", Kind::Comment, 1000, 200),
        ("500/s", Kind::Comment, 2500, 500),
        ("200 at once", Kind::Comment, 200, 0),
        ("200/s label", Kind::Labeled, 1000, 200),
        ("200 at once label", Kind::Labeled, 200, 0),
    ] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.extend(load(&url, kind, count, rate, n).await);
            n += count;
            theirs.extend(load(&base, kind, count, rate, 0).await);
        }
        let (p50, p99) = (pct(ours.clone(), 0.5), pct(ours, 0.99));
        let (b50, b99) = (pct(theirs.clone(), 0.5), pct(theirs, 0.99));
        println!(
            "{label:>18} {p50:>10.1} {p99:>10.1} {b50:>10.1} {b99:>10.1} {:>8.1}x",
            p99 / b99
        );
    }

    println!(
        "RSS after the load runs ({} deliveries): {} MB",
        n - 100,
        airlock_tests::rss_mb(pid)
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
