//! Sessions seen and governed from the command line.

use airlock_core::domain::{ProfileSpec, Role, Surface};
use airlock_core::store::{ApplyOutcome, NewSession};
use airlock_tests::{stderr, Engine, Install};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lists_shows_and_cancels_a_session() {
    let install = Install::new(Engine::Sqlite).await;
    install.ok(&["migrate"]);
    // A session as the broker records it, in the installation's own database and key.
    let store = install.store().await;
    let ada = store
        .add_human("Ada Lovelace", "ada@example.com", Role::Member)
        .await
        .unwrap();
    let spec = ProfileSpec::from_toml(
        "name = \"tests\"\n[agent]\nkind = \"command\"\ncommand = \"make test\"\n",
    )
    .unwrap();
    let ApplyOutcome::Created {
        profile_id,
        version,
    } = store.apply_profile(&spec, None).await.unwrap()
    else {
        panic!("profile not created")
    };
    let session = store
        .create_session(NewSession {
            requester_id: ada.id.clone(),
            surface: Surface::Slack,
            thread_ref: airlock_core::domain::ThreadRef::Slack(
                airlock_core::domain::thread::SlackThread {
                    channel: "C1".into(),
                    thread_ts: Some("1.2".into()),
                    ..Default::default()
                },
            ),
            repo: "acme/web".into(),
            profile_id,
            profile_version: version,
            prompt: "fix the flaky login test \u{1b}[2J".into(),
            trigger_id: None,
            thread_key: None,
            notify: None,
        })
        .await
        .unwrap();
    store.close().await;

    let list = install.ok(&[
        "session",
        "list",
        "--state",
        "queued",
        "--human",
        "ada@example.com",
    ]);
    assert!(
        list.contains(session.id.as_str()) && list.contains("acme/web") && list.contains("slack"),
        "{list}"
    );
    assert!(
        !list.contains('\u{1b}'),
        "terminal escapes in stored text are neutralised"
    );
    assert_eq!(
        install.ok(&["session", "list", "--state", "running"]),
        "(none)\n"
    );

    let show = install.ok(&["session", "show", &session.id]);
    assert!(
        show.contains("State     queued")
            && show.contains("Requester Ada Lovelace <ada@example.com>"),
        "{show}"
    );

    let out = install.ok(&[
        "session",
        "cancel",
        &session.id,
        "--reason",
        "not needed any more",
    ]);
    assert_eq!(out, format!("Cancelled session {}.\n", session.id));
    let shown = install.json(&["session", "show", &session.id]);
    assert_eq!(shown["session"]["state"], "cancelled");
    assert_eq!(shown["session"]["reason"], "not needed any more");
    let events = shown["events"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["payload"]["to"], "cancelled");

    // Cancelling twice says why not, in one line.
    let again = install.run(&["session", "cancel", &session.id]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again),
        format!(
            "error: session {} is cancelled already; there is nothing to stop\n",
            session.id
        )
    );
    let audit = install.json(&["audit", "tail"]);
    let last = audit.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "session.cancel");
    assert_eq!(last["session_id"], session.id.as_str());
}
