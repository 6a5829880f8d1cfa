//! The broker's queue through the real server: concurrency limits hold (deployment-wide and
//! per human, on SQLite and on PostgreSQL's `FOR UPDATE SKIP LOCKED` claims), a cancelled
//! session's sandbox goes at once, and a server killed mid-session loses and strands nothing.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::{Duration, Instant};

use airlock_tests::sessions::{detach, install_on, show, state_of, wait_for};
use airlock_tests::{Engine, Install, Server};

const ACTIVE: &[&str] = &["starting", "running", "finishing"];

fn sessions(install: &Install) -> Vec<serde_json::Value> {
    install
        .json(&["session", "list", "--limit", "1000"])
        .as_array()
        .cloned()
        .unwrap()
}

fn active(list: &[serde_json::Value], requester: Option<&str>) -> usize {
    list.iter()
        .filter(|s| ACTIVE.contains(&s["state"].as_str().unwrap()))
        .filter(|s| requester.is_none_or(|r| s["requester_id"] == r))
        .count()
}

async fn limits(engine: Engine) {
    let mut install = install_on(
        engine,
        &[
            ("slow", "echo start; sleep 2; echo end", ""),
            ("long", "sleep 300", ""),
        ],
    )
    .await;
    install
        .env("AIRLOCK_BROKER_MAX_SESSIONS", "3")
        .env("AIRLOCK_BROKER_MAX_SESSIONS_PER_HUMAN", "10");
    let server = Server::start(&install);
    let ids: Vec<String> = (0..10)
        .map(|i| detach(&install, "slow", &format!("job {i}")))
        .collect();
    // Sample the sessions and the containers until all ten have ended.
    let mut most_sessions = 0;
    let mut most_containers = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let list = sessions(&install);
        most_sessions = most_sessions.max(active(&list, None));
        most_containers = most_containers.max(server.containers().len());
        if list.iter().all(|s| s["state"] == "succeeded") && list.len() == 10 {
            break;
        }
        assert!(
            list.iter()
                .all(|s| !["failed", "cancelled", "timed_out"]
                    .contains(&s["state"].as_str().unwrap())),
            "{list:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "the ten sessions did not finish: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        most_sessions, 3,
        "at most three at once, and the limit was reached"
    );
    assert!(most_containers <= 3, "{most_containers} sandboxes at once");
    for id in &ids {
        assert_eq!(state_of(&install, id), "succeeded");
    }

    // Cancel: the running session's sandbox is gone within five seconds.
    let id = detach(&install, "long", "wait");
    wait_for("the long session to run", Duration::from_secs(60), || {
        state_of(&install, &id) == "running"
    });
    assert_eq!(server.containers().len(), 1);
    install.ok(&["session", "cancel", &id, "--reason", "not needed after all"]);
    let cancelled = Instant::now();
    while !server.containers().is_empty() {
        assert!(
            cancelled.elapsed() < Duration::from_secs(5),
            "the cancelled session's sandbox is still there after 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "cancelled sandbox gone after {} ms",
        cancelled.elapsed().as_millis()
    );
    let shown = show(&install, &id);
    assert_eq!(shown["session"]["state"], "cancelled");
    assert_eq!(shown["session"]["reason"], "not needed after all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sessions_with_a_limit_of_three_never_run_more_than_three_and_cancel_is_prompt() {
    limits(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_human_cannot_take_every_slot() {
    let mut install = install_on(Engine::Sqlite, &[("slow", "sleep 3; echo done", "")]).await;
    install.ok(&[
        "human",
        "add",
        "--name",
        "Bob",
        "--email",
        "bob@example.com",
    ]);
    install
        .env("AIRLOCK_BROKER_MAX_SESSIONS", "5")
        .env("AIRLOCK_BROKER_MAX_SESSIONS_PER_HUMAN", "2");
    let _server = Server::start(&install);
    let ada: Vec<String> = (0..4)
        .map(|i| detach(&install, "slow", &format!("ada {i}")))
        .collect();
    let bob = install
        .ok(&[
            "run",
            "--repo",
            "acme/web",
            "--profile",
            "slow",
            "--as",
            "bob@example.com",
            "--detach",
            "bob",
        ])
        .trim()
        .to_string();
    let ada_id = show(&install, &ada[0])["session"]["requester_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bob_ran_while_ada_waited = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = sessions(&install);
        assert!(active(&list, Some(&ada_id)) <= 2, "{list:#?}");
        let bob_state = list.iter().find(|s| s["id"] == bob.as_str()).unwrap()["state"].clone();
        let ada_queued = list
            .iter()
            .any(|s| s["requester_id"] == ada_id.as_str() && s["state"] == "queued");
        if ACTIVE.contains(&bob_state.as_str().unwrap()) && ada_queued {
            bob_ran_while_ada_waited = true;
        }
        if list.iter().all(|s| s["state"] == "succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "{list:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        bob_ran_while_ada_waited,
        "Bob's session waited behind Ada's queue"
    );
}

/// The server is killed with sessions queued, running and about to start; after a restart
/// every session ends in a terminal state with a reason, and none is stuck.
async fn restart(engine: Engine) {
    let mut install = install_on(
        engine,
        &[(
            "ticks",
            "for i in 1 2 3 4; do echo tick $i; sleep 1; done",
            "",
        )],
    )
    .await;
    install
        .env("AIRLOCK_BROKER_MAX_SESSIONS", "2")
        .env("AIRLOCK_BROKER_MAX_SESSIONS_PER_HUMAN", "10");
    let mut server = Server::start(&install);
    let ids: Vec<String> = (0..5)
        .map(|i| detach(&install, "ticks", &format!("count {i}")))
        .collect();
    wait_for("two sessions to run", Duration::from_secs(60), || {
        active(&sessions(&install), None) == 2
    });
    server.kill_hard();
    let states: Vec<String> = ids.iter().map(|id| state_of(&install, id)).collect();
    assert!(states.iter().any(|s| s == "queued"), "{states:?}");
    let _server = Server::start(&install);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = sessions(&install);
        if list.iter().all(|s| {
            ["succeeded", "failed", "cancelled", "timed_out"]
                .contains(&s["state"].as_str().unwrap())
        }) {
            for s in &list {
                assert!(
                    s["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "no reason: {s}"
                );
            }
            // Sessions that were running continued; queued ones ran after the restart.
            let ok = list.iter().filter(|s| s["state"] == "succeeded").count();
            assert_eq!(ok, 5, "{list:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions stuck after the restart: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &ids {
        let shown = show(&install, id);
        let out: String = shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "command_output")
            .map(|e| e["payload"]["text"].as_str().unwrap())
            .collect();
        for i in 1..=4 {
            assert_eq!(
                out.matches(&format!("tick {i}\n")).count(),
                1,
                "{id}: {out}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_session_loses_and_strands_nothing() {
    restart(Engine::Sqlite).await
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_sessions_with_a_limit_of_three_never_run_more_than_three_and_cancel_is_prompt() {
        limits(Engine::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_killed_mid_session_loses_and_strands_nothing() {
        restart(Engine::Postgres).await
    }
}
