//! Benchmark (not a test): from `airlock run` to the agent's first command with a warm pool,
//! next to the claim alone (the database work that hands a queued session a warm sandbox), at
//! concurrency 1, 10 and 30, in one run (issue 14: at most 30 ms more than the claim).
//!
//!     cargo build --workspace --bins && AIRLOCK_TEST_BIN=target/debug/airlock \
//!       cargo run -p airlock-tests --example bench_session_start [-- ROUNDS]
//!
//! "From `airlock run`": the moment before the CLI process is spawned to the moment the
//! agent's command (`date +%s%N`) runs, read off the shared clock by the command itself.
//! "The claim alone": on a scratch database of the same engine, as many queued sessions and
//! ready warm sandboxes, each claimed at once by its own task (`claim_next_session` then
//! `claim_warm_sandbox`), from the common start. Needs root, Docker and the base image.

use std::time::Duration;

use airlock_core::store::NewSandbox;
use airlock_tests::sessions::{has_ended, install_on, output_of, ready_warm, show};
use airlock_tests::{airlock_bin, Engine, Install, Server};

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms[ms.len() / 2]
}

fn p95(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms[((ms.len() as f64 * 0.95).ceil() as usize).min(ms.len()) - 1]
}

const PROFILE: &str = "[agent]\nkind = \"command\"\ncommand = \"date +%s%N\"\n";

/// `concurrency` sessions requested at once with `airlock run --detach`; each one's time from
/// the request to its command, and the part of it before the session was recorded (the CLI
/// starting, opening the database and queuing), in ms.
async fn requests(install: &Install, concurrency: usize) -> Vec<(f64, f64)> {
    let mut runs = Vec::new();
    for _ in 0..concurrency {
        let mut cmd = tokio::process::Command::new(airlock_bin());
        cmd.args([
            "run",
            "--repo",
            "acme/web",
            "--profile",
            "warm",
            "--detach",
            "bench",
        ])
        .current_dir(install.path())
        .env("AIRLOCK_LOG", "warn");
        for (k, v) in install.env_pairs() {
            cmd.env(k, v);
        }
        let t0 = now_ns();
        runs.push((t0, cmd.output()));
    }
    let mut ids = Vec::new();
    for (t0, run) in runs {
        let out = run.await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push((t0, String::from_utf8_lossy(&out.stdout).trim().to_string()));
    }
    let mut times = Vec::new();
    for (t0, id) in ids {
        let shown = loop {
            let shown = show(install, &id);
            let state = shown["session"]["state"].as_str().unwrap().to_string();
            if has_ended(&state) {
                assert_eq!(state, "succeeded", "{:#}", shown["session"]);
                break shown;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let t1: i128 = output_of(&shown)
            .trim()
            .parse()
            .expect("the command's clock");
        let created = shown["session"]["created_at"].as_i64().unwrap() as i128 * 1_000_000;
        if std::env::var("BENCH_TRACE").is_ok() {
            // Where the time goes: each event's moment after the request.
            for e in shown["events"].as_array().unwrap() {
                let at = e["at"].as_i64().unwrap() as i128 * 1_000_000;
                println!(
                    "    +{:>6.1} ms  {} {}",
                    (at - t0) as f64 / 1e6,
                    e["kind"].as_str().unwrap(),
                    e["payload"]
                        .to_string()
                        .chars()
                        .take(100)
                        .collect::<String>()
                );
            }
            println!("    +{:>6.1} ms  the command ran", (t1 - t0) as f64 / 1e6);
        }
        times.push(((t1 - t0) as f64 / 1e6, (created - t0) as f64 / 1e6));
    }
    times
}

/// The claim alone, `concurrency` at once, on a scratch database: ms from the common start.
async fn claims(concurrency: usize) -> Vec<f64> {
    let install = install_on(Engine::Sqlite, &[("warm", "date +%s%N", "")]).await;
    let store = airlock_core::Store::connect(
        &install.database_url,
        8,
        airlock_core::secrets::MasterKey::generate(),
    )
    .await
    .unwrap();
    let profile = store.find_profile("warm").await.unwrap();
    let pv = store.profile_version(&profile.id, None).await.unwrap();
    let human = store.find_human("ada@example.com").await.unwrap();
    for _ in 0..concurrency {
        let sb = store
            .insert_sandbox(NewSandbox {
                role: "warm",
                profile_id: pv.profile_id.clone(),
                profile_version: pv.version,
                image: "bench".into(),
                session_id: None,
            })
            .await
            .unwrap();
        store.set_sandbox_ready(&sb.id).await.unwrap();
        store
            .create_session(airlock_core::store::NewSession {
                requester_id: human.id.clone(),
                surface: airlock_core::domain::Surface::Cli,
                thread_ref: Default::default(),
                repo: "acme/web".into(),
                profile_id: pv.profile_id.clone(),
                profile_version: pv.version,
                prompt: "bench".into(),
                trigger_id: None,
                thread_key: None,
                notify: None,
            })
            .await
            .unwrap();
    }
    let t0 = now_ns();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (store, pv) = (store.clone(), pv.clone());
        tasks.push(tokio::spawn(async move {
            let s = store
                .claim_next_session("srv_bench", airlock_core::ids::now_ms() + 30_000, 100, 100)
                .await
                .unwrap()
                .expect("a queued session");
            store
                .claim_warm_sandbox(&pv.profile_id, pv.version, &s.id)
                .await
                .unwrap()
                .expect("a warm sandbox");
            (now_ns() - t0) as f64 / 1e6
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    println!("Request (`airlock run`) -> first agent command with a warm pool, next to the claim alone; {rounds} round(s) each");
    println!(
        "  {:<12} {:>16} {:>16} {:>16} {:>10}",
        "concurrency", "request median", "claim median", "difference", "goal"
    );
    let mut queued_parts = Vec::new();
    for concurrency in [1usize, 10, 30] {
        let mut install = install_on(Engine::Sqlite, &[("warm", "date +%s%N", "")]).await;
        install
            .env("AIRLOCK_BROKER_MAX_SESSIONS", "40")
            .env("AIRLOCK_BROKER_MAX_SESSIONS_PER_HUMAN", "40");
        let file = install.path().join("warm.toml");
        std::fs::write(
            &file,
            format!("name = \"warm\"\n{PROFILE}[sandbox]\nwarm_pool = {concurrency}\n"),
        )
        .unwrap();
        install.ok(&["profile", "apply", "-f", file.to_str().unwrap()]);
        let server = Server::start(&install);
        let mut request = Vec::new();
        let mut claim = Vec::new();
        for _ in 0..rounds {
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while ready_warm(&install) < concurrency {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the warm pool did not fill"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Let the pool settle (its last sandboxes' set-up done) before requesting.
            tokio::time::sleep(Duration::from_millis(500)).await;
            request.extend(requests(&install, concurrency).await);
            claim.extend(claims(concurrency).await);
        }
        queued_parts.push((concurrency, median(request.iter().map(|r| r.1).collect())));
        let request: Vec<f64> = request.into_iter().map(|r| r.0).collect();
        let (r, c) = (median(request.clone()), median(claim.clone()));
        println!(
            "  {concurrency:<12} {:>13.1} ms {:>13.1} ms {:>13.1} ms {:>10}   (p95 {:.1} / {:.1} ms) {}",
            r,
            c,
            r - c,
            "<= 30 ms",
            p95(request),
            p95(claim),
            if r - c <= 30.0 { "met" } else { "NOT MET" }
        );
        drop(server);
    }
    for (concurrency, ms) in queued_parts {
        println!("  of which `airlock run` until the session is queued, concurrency {concurrency}: median {ms:.1} ms");
    }
}
