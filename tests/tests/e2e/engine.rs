//! The server and its Docker engine: an engine that is down at start-up, or goes away, is
//! waited for (and said so), and sessions run once it answers, with no restart.
//!
//! Needs root, a running Docker engine and the base image (scripts/test provides all three).

use std::time::{Duration, Instant};

use airlock_tests::console::{client, page, set_password, sign_in};
use airlock_tests::git::work_tree;
use airlock_tests::sessions::{install_on, show};
use airlock_tests::{Engine, Server};

async fn health(server: &Server) -> serde_json::Value {
    reqwest::get(format!("http://127.0.0.1:{}/healthz", server.port))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_with_its_engine_down_runs_the_queued_session_once_it_answers() {
    let mut install = install_on(
        Engine::Sqlite,
        &[("hello", "echo 'hello from the sandbox'", "")],
    )
    .await;
    // The engine is reached through a socket path that does not exist yet: the engine is
    // "down" until the test links it to the real one.
    let socket = install.path().join("engine.sock");
    install.env(
        "AIRLOCK_DOCKER_HOST",
        &format!("unix://{}", socket.display()),
    );
    work_tree(&install.path().join("hello"), &[("README.md", "hello\n")]);
    let password = "correct horse battery staple";
    set_password(&install, "ada@example.com", password);
    let server = Server::start(&install);
    let base = format!("http://127.0.0.1:{}", server.port);
    let http = client();

    // It serves, says it is degraded and why, and takes the request.
    let h = health(&server).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["database"], "ok", "{h}");
    let why = h["sandboxes"].as_str().unwrap();
    assert!(
        why.starts_with("waiting: the Docker engine at unix://") && why.contains("not reachable"),
        "{h}"
    );
    let id = install
        .ok(&[
            "run",
            "--repo",
            "./hello",
            "--profile",
            "hello",
            "--detach",
            "say hello",
        ])
        .trim()
        .to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(show(&install, &id)["session"]["state"], "queued");
    // The admin page says why: on the session and on the overview.
    let session = sign_in(&http, &base, "ada@example.com", password).await;
    let shown = page(&http, &base, &session, &format!("/sessions/{id}")).await;
    assert!(
        shown.contains("This session waits: the Docker engine at unix://"),
        "{shown}"
    );
    let overview = page(&http, &base, &session, "/overview").await;
    assert!(
        overview.contains("sessions wait: the Docker engine at unix://")
            && overview.contains("not started yet: it starts with the sandboxes"),
        "{overview}"
    );

    // The engine comes up: the queued session runs, with no restart.
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let shown = loop {
        let shown = show(&install, &id);
        if shown["session"]["state"] == "succeeded" || shown["session"]["state"] == "failed" {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the session did not end: {shown:#}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        shown["session"]["state"],
        "succeeded",
        "{shown:#}\n{}",
        server.log()
    );
    let output = airlock_tests::sessions::output_of(&shown);
    assert!(output.contains("hello from the sandbox"), "{output}");
    let shown = page(&http, &base, &session, &format!("/sessions/{id}")).await;
    assert!(!shown.contains("This session waits"), "{shown}");
    let overview = page(&http, &base, &session, "/overview").await;
    assert!(overview.contains("serving sandboxes on "), "{overview}");
    let h = health(&server).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["sandboxes"], "ready", "{h}");
    let log = server.log();
    assert!(
        log.contains("sessions wait until it answers")
            && log.contains("the Docker engine answers; sandboxes can start"),
        "{log}"
    );
    drop(server);
}
