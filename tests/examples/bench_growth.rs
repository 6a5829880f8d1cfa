//! Benchmark (not a test): the admin pages, `airlock session list` and the audit exports of a
//! deployment that has grown, on SQLite and (with `AIRLOCK_TEST_POSTGRES_URL`) PostgreSQL.
//! Each figure is printed next to its goal (issue 14): pages and lists under 50 ms, the
//! exports complete with the exporting process under 100 MB RSS.
//!
//!     cargo build --workspace --bins && AIRLOCK_TEST_BIN=target/debug/airlock \
//!       cargo run --release -p airlock-tests --example bench_growth [-- SESSIONS AUDIT_ROWS]
//!
//! Defaults: 100,000 sessions and 1,000,000 audit rows (see `airlock_tests::seed`). Needs a
//! running Docker engine (`airlock up` creates its sandbox network).

use std::time::{Duration, Instant};

use airlock_tests::seed::{seed, Seeded};
use airlock_tests::sessions::install_on;
use airlock_tests::{admin_cookie, rss_mb, run_sampled, Engine, Server};

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms[ms.len() / 2]
}

fn row(what: &str, figure: String, goal: &str, met: bool) {
    println!(
        "  {what:<44} {figure:>16}   goal {goal:<10} {}",
        if met { "met" } else { "NOT MET" }
    );
}

/// Median time of `n` GETs of `path`, checking each answers 200 with `expect` in its body.
async fn page_ms(base: &str, cookie: &str, path: &str, expect: &str, n: usize) -> (f64, usize) {
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body = r.text().await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(body.contains(expect), "{path} lacks {expect:?}");
        size = body.len();
    }
    (median(times), size)
}

async fn bench(engine: Engine, sessions: i64, audit_rows: i64) {
    let install = install_on(engine, &[("seeded", "true", "")]).await;
    let pool = install.raw_db().await;
    let t = Instant::now();
    let Seeded { long_session, .. } =
        seed(&pool, &install.database_url, sessions, audit_rows).await;
    println!(
        "{}: seeded {sessions} sessions and {audit_rows} audit rows in {:.1} s",
        if install.database_url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        t.elapsed().as_secs_f64()
    );
    let server = Server::start(&install);
    let base = format!("http://127.0.0.1:{}", server.port);
    let cookie = admin_cookie(&install).await;
    let goal = 50.0;
    let (ms, size) = page_ms(&base, &cookie, "/sessions", "Older sessions", 20).await;
    row(
        &format!("admin sessions page ({} KB)", size / 1024),
        format!("{ms:.1} ms"),
        "< 50 ms",
        ms < goal,
    );
    let middle = format!("ses_seed{}", 1_000_000 + sessions / 2);
    let middle_at: i64 = sqlx::query_scalar("SELECT created_at FROM sessions WHERE id = $1")
        .bind(&middle)
        .fetch_one(&pool)
        .await
        .unwrap();
    let (ms, _) = page_ms(
        &base,
        &cookie,
        &format!("/sessions?before={middle_at}.{middle}&state=failed"),
        "Older sessions",
        20,
    )
    .await;
    row(
        "admin sessions page, failed, a later page",
        format!("{ms:.1} ms"),
        "< 50 ms",
        ms < goal,
    );
    let (ms, size) = page_ms(
        &base,
        &cookie,
        &format!("/sessions/{long_session}"),
        "Earlier events",
        20,
    )
    .await;
    row(
        &format!("session page, 5,000-event log ({} KB)", size / 1024),
        format!("{ms:.1} ms"),
        "< 50 ms",
        ms < goal,
    );
    let (ms, _) = page_ms(&base, &cookie, &format!("/sessions/{middle}"), "Log", 20).await;
    row(
        "session page, a seeded session",
        format!("{ms:.1} ms"),
        "< 50 ms",
        ms < goal,
    );
    let (ms, _) = page_ms(&base, &cookie, "/audit?q=items/77", "Older entries", 10).await;
    row(
        "audit search (one 100,000-entry range)",
        format!("{ms:.1} ms"),
        "(a limit)",
        true,
    );
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (_, lines, _) = run_sampled(&install, &["session", "list"]);
        assert!(lines > 50, "session list printed {lines} lines");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let ms = median(times);
    row(
        "`airlock session list` (whole process)",
        format!("{ms:.1} ms"),
        "< 50 ms",
        ms < goal,
    );

    // The admin export: every row, the server's RSS sampled throughout.
    let pid = server.child.id();
    let before = rss_mb(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_mb(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t = Instant::now();
    let mut r = reqwest::Client::new()
        .get(format!("{base}/audit.jsonl"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let all = audit_rows as u64;
    row(
        &format!(
            "/audit.jsonl: {lines} rows in {:.1} s, server RSS",
            t.elapsed().as_secs_f64()
        ),
        format!("{before} -> {peak} MB"),
        "< 100 MB",
        peak < 100 && lines > all,
    );
    let t = Instant::now();
    let (_, lines, peak) = run_sampled(&install, &["audit", "export"]);
    let secs = t.elapsed().as_secs_f64();
    row(
        &format!("`airlock audit export`: {lines} rows in {secs:.1} s, RSS"),
        format!("{peak} MB"),
        "< 100 MB",
        peak < 100 && lines > all,
    );
    drop(server);
}

#[tokio::main]
async fn main() {
    let arg = |i: usize, default: i64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (sessions, audit_rows) = (arg(1, 100_000), arg(2, 1_000_000));
    bench(Engine::Sqlite, sessions, audit_rows).await;
    if std::env::var("AIRLOCK_TEST_POSTGRES_URL").is_ok() {
        bench(Engine::Postgres, sessions, audit_rows).await;
    } else {
        println!("PostgreSQL: skipped (set AIRLOCK_TEST_POSTGRES_URL)");
    }
}
