//! Benchmark (not a test): how long from "request accepted" to "the agent's first command is
//! running", for a cold start from a profile snapshot and for a warm-pool claim, next to a
//! bare `docker run` of the same snapshot image, all in one run.
//!
//! The agent's command is `date +%s%N`: the moment it runs is read off the shared clock by the
//! command itself, so neither side pays for output batching or polling.
//!
//!     cargo build --workspace --bins && AIRLOCK_TEST_BIN=target/debug/airlock \
//!       cargo run -p airlock-tests --example bench_sandbox_start [-- N]
//!
//! Needs root, a running Docker engine and the base image (`airlock image build`).

use std::time::Duration;

use airlock_core::broker::Broker;
use airlock_core::domain::{ProfileSpec, Role, SessionState, Surface};
use airlock_core::store::{ApplyOutcome, NewSession};

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn stats(name: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = ms[ms.len() / 2];
    let p95 = ms[((ms.len() as f64 * 0.95).ceil() as usize).min(ms.len()) - 1];
    println!(
        "{name:<34} median {median:>7.1} ms   p95 {p95:>7.1} ms   (n = {})",
        ms.len()
    );
    median
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let stack = airlock_tests::LocalStack::start(None, None).await;
    let store = stack.store.clone();
    let sandboxes = stack.sandboxes.clone();
    let ada = store
        .add_human("Bench", "bench@example.com", Role::Admin)
        .await?;

    let mut profiles = Vec::new();
    for (name, warm) in [("cold", 0), ("warm", 1)] {
        let spec = ProfileSpec::from_toml(&format!(
            "name = \"{name}\"\n[agent]\nkind = \"command\"\ncommand = \"date +%s%N\"\n\
             [sandbox]\nwarm_pool = {warm}\nsetup = [\"echo prepared > /home/agent/prepared\"]\n"
        ))?;
        let ApplyOutcome::Created {
            profile_id,
            version,
        } = store.apply_profile(&spec, None).await?
        else {
            unreachable!()
        };
        profiles.push((profile_id, version));
    }
    // Snapshots are prepared ahead, as `airlock snapshot build` would.
    let mut snapshot_image = String::new();
    for (id, _) in &profiles {
        let profile = store.find_profile(id).await?;
        let pv = store.profile_version(id, None).await?;
        let mut quiet = |_: &str| {};
        snapshot_image = sandboxes.image_for(&profile, &pv, &mut quiet).await?;
    }

    let broker = Broker::new(
        store.clone(),
        sandboxes.clone(),
        "srv_bench".into(),
        airlock_core::broker::BrokerSettings::local(),
    );
    tokio::spawn(broker.clone().run(std::future::pending()));

    let submit = |profile: usize| {
        let store = store.clone();
        let (profile_id, version) = profiles[profile].clone();
        let requester = ada.id.clone();
        let broker = broker.clone();
        async move {
            let t0 = now_ns();
            let s = store
                .create_session(NewSession {
                    requester_id: requester,
                    surface: Surface::Cli,
                    thread_ref: Default::default(),
                    repo: "acme/web".into(),
                    profile_id,
                    profile_version: version,
                    prompt: "bench".into(),
                    trigger_id: None,
                    thread_key: None,
                    notify: None,
                })
                .await?;
            broker.wake();
            loop {
                let now = store.session(&s.id).await?;
                if now.state.is_terminal() {
                    anyhow::ensure!(
                        now.state == SessionState::Succeeded,
                        "session {} {}: {:?}",
                        s.id,
                        now.state,
                        now.reason
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let events = store.events(&s.id, 0, 10_000).await?;
            let printed: String = events
                .iter()
                .filter(|e| e.kind == airlock_core::domain::EventKind::CommandOutput)
                .filter_map(|e| e.payload.get("text").and_then(|t| t.as_str()))
                .filter(|t| t.trim().chars().all(|c| c.is_ascii_digit()) && !t.trim().is_empty())
                .collect();
            let t1: i128 = printed.trim().parse()?;
            anyhow::Ok((t1 - t0) as f64 / 1e6)
        }
    };

    let warm_ready = || async {
        loop {
            let ready = store
                .live_sandboxes()
                .await?
                .iter()
                .filter(|s| s.role == "warm" && s.state == "ready")
                .count();
            if ready > 0 {
                return anyhow::Ok(());
            }
            broker.wake();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let mut baseline = Vec::new();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    // Interleaved, so a busy moment of the machine hits all three alike.
    for i in 0..n + 1 {
        let t0 = now_ns();
        let out = tokio::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "date",
                &snapshot_image,
                "+%s%N",
            ])
            .output()
            .await?;
        let t1: i128 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        let b = (t1 - t0) as f64 / 1e6;
        let c = submit(0).await?;
        warm_ready().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let w = submit(1).await?;
        if i > 0 {
            // The first round warms Docker's caches; it is not counted.
            baseline.push(b);
            cold.push(c);
            warm.push(w);
        }
    }
    println!(
        "Request accepted -> first agent command running ({n} rounds, image {snapshot_image})"
    );
    let b = stats("bare `docker run` (baseline)", baseline);
    let c = stats("cold start from snapshot", cold);
    let w = stats("warm-pool claim", warm);
    println!(
        "cold / baseline = {:.2}x (goal <= 1.5x); warm-pool claim median {w:.1} ms (goal < 150 ms); warm / baseline = {:.2}x",
        c / b,
        w / b
    );

    broker.abort_all();
    for sb in store.live_sandboxes().await? {
        sandboxes.release(&sb, "benchmark over").await;
    }
    drop(stack);
    Ok(())
}
