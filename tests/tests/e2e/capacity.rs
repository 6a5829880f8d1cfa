//! A deployment whose sandbox network is full: `airlock doctor` says so with the numbers, and
//! a session that cannot get an address waits, says why, and starts once one is released,
//! instead of failing.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::Duration;

use airlock_tests::sessions::{
    detach, install_on, notes_of, output_of, ready_warm, show, state_of, wait_ended, wait_for,
};
use airlock_tests::{Engine, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waits_for_a_sandbox_address_and_starts_when_one_frees() {
    let hog = |warm: u32| {
        format!(
            "name = \"hog\"\n[agent]\nkind = \"command\"\ncommand = \"true\"\n\
             [sandbox]\nwarm_pool = {warm}\n"
        )
    };
    let mut install = install_on(Engine::Sqlite, &[("quick", "echo started-at-last", "")]).await;
    // A /29 addresses 5 sandboxes; the hog's warm pool takes all of them.
    let n = rand::random::<u8>() % 250;
    install
        .env("AIRLOCK_SANDBOX_SUBNET", &format!("10.251.{n}.0/29"))
        .env("AIRLOCK_BROKER_MAX_SESSIONS", "2");
    let hog_file = install.path().join("hog.toml");
    std::fs::write(&hog_file, hog(5)).unwrap();
    install.ok(&["profile", "apply", "-f", hog_file.to_str().unwrap()]);

    // doctor: 2 sessions + 5 warm need 7 of 5 addresses.
    let doctor = install.run(&["--json", "doctor"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let capacity = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "capacity")
        .unwrap_or_else(|| panic!("no capacity check: {report}"));
    assert_eq!(capacity["status"], "warn", "{capacity}");
    let detail = capacity["detail"].as_str().unwrap();
    assert!(
        detail.contains("addresses for 5 sandboxes")
            && detail.contains("broker.max_sessions = 2")
            && detail.contains("warm pools = 5 need 7"),
        "{detail}"
    );
    assert!(capacity["fix"]
        .as_str()
        .unwrap()
        .contains("2 session(s) may wait"));

    let server = Server::start(&install);
    wait_for(
        "the warm pool to take every address",
        Duration::from_secs(120),
        || ready_warm(&install) == 5,
    );
    let id = detach(&install, "quick", "start when you can");
    wait_for(
        "the session to say it waits",
        Duration::from_secs(60),
        || {
            notes_of(&show(&install, &id))
                .iter()
                .any(|n| n.contains("Waiting for a sandbox address"))
        },
    );
    // It waits: the broker tries again (each try renews the session's lease) and the session
    // stays `starting`, not failed.
    let db = install.raw_db().await;
    let lease = |db: sqlx::AnyPool, id: String| async move {
        sqlx::query_scalar::<_, i64>("SELECT lease_until FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let mut leases = vec![lease(db.clone(), id.clone()).await];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while leases.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not try again: {leases:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = lease(db.clone(), id.clone()).await;
        if now != *leases.last().unwrap() {
            leases.push(now);
        }
        assert_eq!(state_of(&install, &id), "starting", "{}", server.log());
    }

    // Shrinking the pool frees the addresses; the session starts and succeeds.
    std::fs::write(&hog_file, hog(0)).unwrap();
    install.ok(&["profile", "apply", "-f", hog_file.to_str().unwrap()]);
    wait_ended(&install, &id, Duration::from_secs(120));
    let shown = show(&install, &id);
    assert_eq!(
        shown["session"]["state"], "succeeded",
        "{:#}",
        shown["session"]
    );
    assert!(output_of(&shown).contains("started-at-last"));
}
