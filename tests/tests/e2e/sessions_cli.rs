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
    // Re-attaching: the latest events so far, then what comes, until the session ends.
    // Interrupted, follow says how to come back; the session goes on.
    follow_and_interrupt(&install, &store, &session.id).await;
    store.close().await;

    let list = install.ok(&[
        "session",
        "list",
        "--state",
        "running",
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
        install.ok(&["session", "list", "--state", "queued"]),
        "(none)\n"
    );

    let show = install.ok(&["session", "show", &session.id]);
    assert!(
        show.contains("State     running")
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

/// `airlock session follow ID --last 2` on a running session: two notes of the three so far,
/// then a message as it arrives; Ctrl-C (SIGINT) stops following with how to re-attach, and
/// the session is still running.
async fn follow_and_interrupt(
    install: &Install,
    store: &airlock_core::Store,
    id: &airlock_core::ids::SessionId,
) {
    use airlock_core::domain::{EventKind, SessionState};
    use std::io::Read;
    for to in [SessionState::Starting, SessionState::Running] {
        store.transition(id, to, None).await.unwrap();
    }
    for n in 1..=3 {
        store
            .append_event(
                id,
                EventKind::Note,
                &serde_json::json!({"text": format!("note {n}")}),
            )
            .await
            .unwrap();
    }
    let mut child = std::process::Command::new(airlock_tests::airlock_bin())
        .args(["session", "follow", id.as_str(), "--last", "2"])
        .current_dir(install.path())
        .env_clear()
        .envs(install.env_pairs())
        .env("AIRLOCK_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    store
        .append_event(
            id,
            EventKind::Message,
            &serde_json::json!({"text": "a message now"}),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{out}\n{err}");
    assert!(out.contains("a message now"), "{out}");
    assert!(
        !err.contains("note 1") && err.contains("note 2") && err.contains("note 3"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "session {id} goes on. Re-attach with `airlock session follow {id}`"
        )),
        "{err}"
    );
    assert_eq!(
        store.session(id).await.unwrap().state,
        SessionState::Running
    );
}
