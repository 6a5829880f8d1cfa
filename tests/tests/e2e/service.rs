//! The session service (`airlock_core::service`) decides and audits the same way for every
//! surface: the same request, follow-up, stop and retry from Slack, Discord, GitHub, the
//! command line and the admin page give the same outcome and exactly one audit row of the
//! same shape, naming the person who acted; triggers are held to their owner's access and
//! their row names the trigger. And `airlock run` goes through it too.

use airlock_core::domain::thread::{NoThread, SlackThread};
use airlock_core::domain::{Human, ProfileSpec, Role, SessionState, Surface, ThreadRef};
use airlock_core::service::{Actor, Refusal, Request, Requested, Sessions, Thread};
use airlock_core::store::{AuditEntry, Session};
use airlock_core::Store;
use airlock_tests::{stderr, Engine, Install};

airlock_tests::on_both_engines!(
    every_surface_gets_the_same_policy_and_one_audit_row_per_change,
    requests_at_once_in_one_thread_make_one_session_and_handle_their_delivery_once
);

const OPEN: &str =
    "name = \"open\"\nrepos = [\"acme/*\"]\n[agent]\nkind = \"command\"\ncommand = \"true\"\n";
const ADMINS: &str = "name = \"admins\"\n[access]\nroles = [\"admin\"]\n[agent]\nkind = \"command\"\ncommand = \"true\"\n";

const SURFACES: [Surface; 5] = [
    Surface::Slack,
    Surface::Discord,
    Surface::Github,
    Surface::Cli,
    Surface::Web,
];

struct World {
    store: Store,
    service: Sessions,
    ada: Human,
    bob: Human,
    eve: Human,
    mal: Human,
}

async fn world(engine: Engine) -> (Install, World) {
    let install = Install::new(engine).await;
    install.ok(&["migrate"]);
    let store = install.store().await;
    let ada = store
        .add_human("Ada Lovelace", "ada@example.com", Role::Admin)
        .await
        .unwrap();
    let bob = store
        .add_human("Bob", "bob@example.com", Role::Member)
        .await
        .unwrap();
    let eve = store
        .add_human("Eve", "eve@example.com", Role::Member)
        .await
        .unwrap();
    let mal = store
        .add_human("Mallory", "mal@example.com", Role::Member)
        .await
        .unwrap();
    for p in [OPEN, ADMINS] {
        store
            .apply_profile(&ProfileSpec::from_toml(p).unwrap(), None)
            .await
            .unwrap();
    }
    let service = Sessions::new(store.clone(), None);
    (
        install,
        World {
            store,
            service,
            ada,
            bob,
            eve,
            mal,
        },
    )
}

fn actor(h: &Human, surface: Surface) -> Actor {
    Actor::human(
        h.clone(),
        surface,
        format!("{} on {surface}", h.display_name),
    )
}

fn request(surface: Surface, profile: &str, repo: &str, n: usize) -> Request {
    // Surfaces with a conversation name it; the command line has none.
    let thread = (surface != Surface::Cli).then(|| Thread {
        key: format!("{surface}:thread:{n}"),
        reference: thread_of(n, "1.0"),
        notify: false,
        delivery: None,
    });
    Request {
        repo: repo.into(),
        profile: Some(profile.into()),
        prompt: format!("fix bug {n}"),
        thread,
        reference: ThreadRef::None(NoThread {
            cli: Some("cli:test".into()),
            trigger: None,
        }),
    }
}

/// The `n`th conversation's thread, at message `ts` (the service does not look inside).
fn thread_of(n: usize, ts: &str) -> ThreadRef {
    ThreadRef::Slack(SlackThread {
        team: "T1".into(),
        channel: format!("C{n}"),
        thread_ts: Some(ts.into()),
        ..Default::default()
    })
}

/// The audit rows written since `seq`.
async fn rows_since(store: &Store, seq: i64) -> Vec<AuditEntry> {
    store
        .audit_page(seq, 1000)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn head(store: &Store) -> i64 {
    store
        .audit_tail(1)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.seq)
}

/// Runs `change`; checks it wrote exactly one row of `action` for `s`, by `by`, on `surface`.
async fn one_row(w: &World, before: i64, action: &str, s: &Session, by: &Human, surface: Surface) {
    let rows = rows_since(&w.store, before).await;
    assert_eq!(rows.len(), 1, "{action} on {surface}: {rows:#?}");
    let r = &rows[0];
    assert_eq!(r.action, action, "{r:#?}");
    assert_eq!(r.actor, format!("human:{}", by.id), "{r:#?}");
    assert_eq!(r.target, s.id);
    assert_eq!(r.session_id.as_deref(), Some(s.id.as_str()));
    assert_eq!(r.detail["surface"], surface.as_str(), "{r:#?}");
}

async fn no_row(w: &World, before: i64, what: &str) {
    let rows = rows_since(&w.store, before).await;
    assert!(rows.is_empty(), "{what} wrote audit rows: {rows:#?}");
}

async fn every_surface_gets_the_same_policy_and_one_audit_row_per_change(engine: Engine) {
    let (_install, w) = world(engine).await;
    for (n, surface) in SURFACES.into_iter().enumerate() {
        // Refusals: a repository outside `repos`, a profile outside `access`, no such profile.
        let before = head(&w.store).await;
        let refusals = [
            (
                "open",
                "other/web",
                Refusal::RepoNotAllowed {
                    profile: "open".into(),
                    repo: "other/web".into(),
                },
            ),
            (
                "admins",
                "acme/web",
                Refusal::HumanNotAllowed {
                    profile: "admins".into(),
                },
            ),
            ("nope", "acme/web", Refusal::UnknownProfile("nope".into())),
        ];
        for (profile, repo, want) in refusals {
            let refused = w
                .service
                .request(&actor(&w.bob, surface), request(surface, profile, repo, n))
                .await
                .unwrap_err();
            assert_eq!(refused, want, "{surface}");
        }
        assert_eq!(
            Refusal::HumanNotAllowed {
                profile: "admins".into()
            }
            .to_string(),
            "you may not use profile `admins`; an admin can add you to its `access`"
        );
        no_row(&w, before, "refused requests").await;
        assert!(
            w.store
                .list_sessions(&Default::default())
                .await
                .unwrap()
                .iter()
                .all(|s| s.surface != surface),
            "a refused request made a session on {surface}"
        );

        // Bob starts a session: one `session.create` row, by Bob, on this surface.
        let before = head(&w.store).await;
        let Requested::Started(s) = w
            .service
            .request(
                &actor(&w.bob, surface),
                request(surface, "open", "acme/web", n),
            )
            .await
            .unwrap()
        else {
            panic!("not started on {surface}")
        };
        assert_eq!(s.state, SessionState::Queued);
        assert_eq!(s.surface, surface);
        assert_eq!(s.requester_id, w.bob.id);
        one_row(&w, before, "session.create", &s, &w.bob, surface).await;

        // While it works: the thread is busy, a follow-up and a retry are refused.
        let before = head(&w.store).await;
        if surface != Surface::Cli {
            let busy = w
                .service
                .request(
                    &actor(&w.bob, surface),
                    request(surface, "open", "acme/web", n),
                )
                .await
                .unwrap();
            assert!(
                matches!(busy, Requested::Busy(ref b) if b.id == s.id),
                "{busy:?}"
            );
        }
        let refused = w
            .service
            .follow_up(&actor(&w.bob, surface), &s.id, "more", None)
            .await
            .unwrap_err();
        assert_eq!(refused, Refusal::StillRunning(s.id.to_string()));
        let refused = w
            .service
            .retry(&actor(&w.bob, surface), &s.id)
            .await
            .unwrap_err();
        assert_eq!(refused, Refusal::StillRunning(s.id.to_string()));
        no_row(&w, before, "refused follow-ups").await;

        // Bob stops it: one `session.cancel` row, by Bob; stopping again is refused, no row.
        let before = head(&w.store).await;
        let stopped = w
            .service
            .stop(&actor(&w.bob, surface), &s.id, None)
            .await
            .unwrap();
        assert_eq!(stopped.state, SessionState::Cancelled);
        assert_eq!(
            stopped.reason.as_deref(),
            Some(format!("stopped by Bob on {surface}").as_str())
        );
        one_row(&w, before, "session.cancel", &s, &w.bob, surface).await;
        let before = head(&w.store).await;
        let again = w
            .service
            .stop(&actor(&w.bob, surface), &s.id, None)
            .await
            .unwrap_err();
        assert_eq!(
            again.to_string(),
            format!(
                "session {} is cancelled already; there is nothing to stop",
                s.id
            )
        );
        no_row(&w, before, "a second stop").await;

        // Asking again in the thread continues the ended session there: its updates go to
        // the new request's place, and one `session.follow_up` row.
        if surface != Surface::Cli {
            let before = head(&w.store).await;
            let mut again = request(surface, "open", "acme/web", n);
            again.prompt = "and once more".into();
            if let Some(t) = again.thread.as_mut() {
                t.reference = thread_of(n, "2.0");
            }
            let Requested::Continued(c) = w
                .service
                .request(&actor(&w.bob, surface), again)
                .await
                .unwrap()
            else {
                panic!("not continued on {surface}")
            };
            assert_eq!(c.id, s.id);
            assert_eq!(c.thread_ref, thread_of(n, "2.0"));
            assert_eq!(w.store.latest_prompt(&c).await.unwrap(), "and once more");
            one_row(&w, before, "session.follow_up", &s, &w.bob, surface).await;
            w.service
                .stop(&actor(&w.bob, surface), &s.id, None)
                .await
                .unwrap();
        }

        // Retry runs the latest prompt again: one `session.retry` row, by Bob.
        let before = head(&w.store).await;
        let retried = w
            .service
            .retry(&actor(&w.bob, surface), &s.id)
            .await
            .unwrap();
        assert_eq!(retried.state, SessionState::Queued);
        assert_eq!(
            w.store.latest_prompt(&retried).await.unwrap(),
            if surface == Surface::Cli {
                format!("fix bug {n}")
            } else {
                "and once more".to_string()
            }
        );
        one_row(&w, before, "session.retry", &s, &w.bob, surface).await;

        // Ada (an admin) stops it.
        let before = head(&w.store).await;
        w.service
            .stop(&actor(&w.ada, surface), &s.id, None)
            .await
            .unwrap();
        one_row(&w, before, "session.cancel", &s, &w.ada, surface).await;

        // A follow-up once the profile no longer lets Bob in is refused, without a row;
        // Ada's follow-up goes through, with its row.
        w.store
            .apply_profile(
                &ProfileSpec::from_toml(&OPEN.replace(
                    "[agent]",
                    "[access]\nroles = [\"admin\"]\nhumans = [\"eve@example.com\"]\n[agent]",
                ))
                .unwrap(),
                None,
            )
            .await
            .unwrap();
        let before = head(&w.store).await;
        let refused = w
            .service
            .follow_up(&actor(&w.bob, surface), &s.id, "and the docs", None)
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            Refusal::HumanNotAllowed {
                profile: "open".into()
            }
        );
        let refused = w
            .service
            .retry(&actor(&w.bob, surface), &s.id)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Refusal::HumanNotAllowed { .. }),
            "{refused:?}"
        );
        no_row(&w, before, "a follow-up outside the profile's access").await;
        let before = head(&w.store).await;
        let followed = w
            .service
            .follow_up(&actor(&w.eve, surface), &s.id, "and the docs", None)
            .await
            .unwrap();
        assert_eq!(
            w.store.latest_prompt(&followed).await.unwrap(),
            "and the docs"
        );
        one_row(&w, before, "session.follow_up", &s, &w.eve, surface).await;
        // Mallory neither asked nor may use the profile: she may not stop it. Eve, who may
        // use it, may.
        let before = head(&w.store).await;
        let refused = w
            .service
            .stop(&actor(&w.mal, surface), &s.id, None)
            .await
            .unwrap_err();
        assert_eq!(refused, Refusal::NotTheirs);
        no_row(&w, before, "a stranger's stop").await;
        w.service
            .stop(&actor(&w.eve, surface), &s.id, None)
            .await
            .unwrap();
        // Back to the open profile for the next surface.
        w.store
            .apply_profile(&ProfileSpec::from_toml(OPEN).unwrap(), None)
            .await
            .unwrap();
    }
    triggers_fire_under_their_owners_policy_with_one_row_naming_the_trigger(&w).await;
}

/// Triggers (webhooks, schedules, GitHub events) are the seventh way in: a trigger acts for
/// its owner, under the owner's access, and its one row names the trigger.
async fn triggers_fire_under_their_owners_policy_with_one_row_naming_the_trigger(w: &World) {
    use airlock_core::domain::TriggerKind;
    use airlock_core::service::Firing;
    use airlock_core::store::NewTrigger;
    let profiles = w.store.list_profiles().await.unwrap();
    let id_of = |name: &str| {
        profiles
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.id.clone())
            .unwrap()
    };
    let trigger = w
        .store
        .create_trigger(&NewTrigger {
            name: "nightly".into(),
            kind: TriggerKind::Webhook,
            config: serde_json::json!({ "prompt": "fix it" }),
            profile_id: id_of("open"),
            repo: "acme/web".into(),
            reply: serde_json::json!({}),
            owner_id: w.bob.id.clone(),
            secret_credential: None,
        })
        .await
        .unwrap();
    let firing = |profile: &str, repo: &str| Firing {
        profile_id: id_of(profile),
        repo: repo.into(),
        prompt: "fix the nightly build".into(),
        reply: ThreadRef::default(),
        notify: None,
        thread_key: None,
        detail: serde_json::json!({ "kind": "webhook", "trigger": "nightly" }),
    };
    let as_bob = Actor::trigger(trigger.id.clone(), "nightly", w.bob.clone());
    let before = head(&w.store).await;
    let refusals = [
        (
            "open",
            "other/web",
            Refusal::RepoNotAllowed {
                profile: "open".into(),
                repo: "other/web".into(),
            },
        ),
        (
            "admins",
            "acme/web",
            Refusal::OwnerNotAllowed {
                profile: "admins".into(),
                owner: "bob@example.com".into(),
            },
        ),
    ];
    for (profile, repo, want) in refusals {
        let refused = w
            .service
            .fire(&as_bob, firing(profile, repo))
            .await
            .unwrap_err();
        assert_eq!(refused, want);
    }
    no_row(w, before, "a refused trigger").await;
    // The same trigger owned by Ada (an admin) may use the admins' profile.
    let as_ada = Actor::trigger(trigger.id.clone(), "nightly", w.ada.clone());
    let s = w
        .service
        .fire(&as_ada, firing("admins", "acme/web"))
        .await
        .unwrap();
    assert_eq!(s.requester_id, w.ada.id);
    let before = head(&w.store).await;
    let s = w
        .service
        .fire(&as_bob, firing("open", "acme/web"))
        .await
        .unwrap();
    assert_eq!(
        (s.surface, s.requester_id.as_str(), s.trigger_id.as_deref()),
        (
            Surface::Trigger,
            w.bob.id.as_str(),
            Some(trigger.id.as_str())
        )
    );
    let rows = rows_since(&w.store, before).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert_eq!(
        (r.action.as_str(), r.actor.clone(), r.target.as_str()),
        (
            "trigger.fire",
            format!("trigger:{}", trigger.id),
            s.id.as_str()
        )
    );
    assert_eq!(r.detail["surface"], "trigger");
    assert_eq!(r.detail["on_behalf_of"], w.bob.id.as_str());
    assert_eq!(r.detail["profile"], "open");
    // A trigger cannot ask as a person does: only firing starts its sessions.
    let asked = w
        .service
        .request(&as_bob, request(Surface::Trigger, "open", "acme/web", 99))
        .await
        .unwrap_err();
    assert!(matches!(asked, Refusal::Invalid(_)), "{asked:?}");
    // The owner stops it where people act (the CLI here): one `session.cancel` row by Bob.
    let before = head(&w.store).await;
    w.service
        .stop(&actor(&w.bob, Surface::Cli), &s.id, None)
        .await
        .unwrap();
    one_row(w, before, "session.cancel", &s, &w.bob, Surface::Cli).await;
}

/// `airlock run` used to check the profile's `repos` but not its `access`, and wrote no
/// audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airlock_run_is_held_to_the_profiles_access_and_is_audited() {
    let install = Install::new(Engine::Sqlite).await;
    install.ok(&["migrate"]);
    install.add_admin();
    install.ok(&[
        "human",
        "add",
        "--name",
        "Bob",
        "--email",
        "bob@example.com",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admins.toml");
    std::fs::write(&file, ADMINS).unwrap();
    install.ok(&["profile", "apply", "-f", file.to_str().unwrap()]);

    let out = install.run(&[
        "run",
        "--as",
        "bob@example.com",
        "--repo",
        "acme/web",
        "--profile",
        "admins",
        "--detach",
        "fix it",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: you may not use profile `admins`; an admin can add you to its `access`\n"
    );
    assert_eq!(install.json(&["session", "list"]), serde_json::json!([]));

    let id = install.ok(&[
        "run",
        "--repo",
        "acme/web",
        "--profile",
        "admins",
        "--detach",
        "fix it",
    ]);
    let id = id.trim();
    let audit = install.json(&["audit", "tail"]);
    let rows: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["session_id"] == id)
        .collect();
    assert_eq!(rows.len(), 1, "{audit:#}");
    assert_eq!(rows[0]["action"], "session.create");
    assert_eq!(rows[0]["detail"]["surface"], "cli");
    assert!(
        rows[0]["actor"].as_str().unwrap().starts_with("human:hum_"),
        "{:#}",
        rows[0]
    );
}

/// With `AIRLOCK_LOG_FORMAT=json`, every line the server logs while it runs a session
/// carries the session in its spans: one session's story can be pulled from the log alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_story_is_in_the_json_log_under_its_id() {
    use airlock_tests::sessions::{detach, install_on, show};
    use airlock_tests::Server;
    let mut install =
        install_on(Engine::Sqlite, &[("echo", "echo hello from the agent", "")]).await;
    install.env("AIRLOCK_LOG_FORMAT", "json");
    let server = Server::start(&install);
    let id = detach(&install, "echo", "say hello");
    airlock_tests::sessions::wait_ended(&install, &id, std::time::Duration::from_secs(90));
    assert_eq!(show(&install, &id)["session"]["state"], "succeeded");
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_session: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["session"] == id.as_str()))
                || l["fields"]["session"] == id.as_str()
        })
        .collect();
    let turn = of_session
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "turn"))
        })
        .count();
    assert!(turn >= 1, "no line in the session's turn span:\n{log}");
    // The bad value of the option is refused in one line, not ignored.
    let out = {
        let mut cmd = std::process::Command::new(airlock_tests::airlock_bin());
        cmd.args(["session", "list"])
            .current_dir(install.path())
            .env("AIRLOCK_LOG_FORMAT", "yaml");
        cmd.output().unwrap()
    };
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: AIRLOCK_LOG_FORMAT is \"yaml\"; expected `text` or `json`\n"
    );
}

/// Eight requests at once in one conversation used to be able to make two sessions (each
/// found none, each created one); now one is started (or continued) and the others are told
/// it is busy. The delivery that carried the request is handled in the same transaction.
async fn requests_at_once_in_one_thread_make_one_session_and_handle_their_delivery_once(
    engine: Engine,
) {
    let (_install, w) = world(engine).await;
    let ask = |n: usize, delivery: Option<String>| {
        let mut r = request(Surface::Github, "open", "acme/web", 7);
        r.prompt = format!("fix bug {n}");
        if let Some(t) = r.thread.as_mut() {
            t.delivery = delivery;
        }
        r
    };
    let bob = actor(&w.bob, Surface::Github);
    for round in ["start", "continue"] {
        let mut deliveries = Vec::new();
        for n in 0..8 {
            let d = w
                .store
                .record_inbound("github", &format!("{round}-{n}"), "issue_comment", "{}")
                .await
                .unwrap()
                .unwrap();
            deliveries.push(d.id);
        }
        let answers = futures_util::future::join_all(
            deliveries
                .iter()
                .enumerate()
                .map(|(n, d)| w.service.request(&bob, ask(n, Some(d.clone())))),
        )
        .await;
        let (mut made, mut busy) = (Vec::new(), 0);
        for a in answers {
            match a.unwrap() {
                Requested::Started(s) | Requested::Continued(s) => made.push(s),
                Requested::Busy(_) => busy += 1,
            }
        }
        assert_eq!((made.len(), busy), (1, 7), "{round}: {made:#?}");
        let s = &made[0];
        let in_thread: Vec<Session> = w
            .store
            .list_sessions(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|x| x.thread_key.as_deref() == Some("github:thread:7"))
            .collect();
        assert_eq!(in_thread.len(), 1, "{round}: {in_thread:#?}");
        // The winning request's delivery is handled with the change: nobody may claim it.
        let mut claimable = 0;
        for d in &deliveries {
            if w.store.claim_inbound(d, "test", 60_000).await.unwrap() {
                claimable += 1;
            }
        }
        assert_eq!(
            claimable, 7,
            "{round}: only the busy requests' deliveries are open"
        );
        w.service.stop(&bob, &s.id, None).await.unwrap();
    }
}
