//! The storage suite: every test runs unchanged on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests need `AIRLOCK_TEST_POSTGRES_URL` (scripts/test starts a throw-away server
//! and sets it); each test gets a fresh database of its own.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use airlock_core::domain::{
    CredentialKind, EventKind, ProfileSpec, Provider, Role, SessionState, Surface, TriggerKind,
};
use airlock_core::secrets::{MasterKey, SecretValue};
use airlock_core::store::{
    AccountRef, ApplyOutcome, DatabaseKind, NewAudit, NewDelivery, NewSession, NewTrigger, Session,
};
use airlock_core::{Store, StoreError};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

/// A migrated store plus a raw connection to the same database, to play the attacker or to
/// look at stored bytes.
struct Db {
    store: Store,
    url: String,
    raw: AnyPool,
    _dir: Option<tempfile::TempDir>,
}

async fn raw_pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

async fn sqlite_db(key: MasterKey) -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("airlock.db").display());
    let store = Store::connect(&url, 8, key).await.unwrap();
    store.migrate().await.unwrap();
    let raw = raw_pool(&url).await;
    Db {
        store,
        url,
        raw,
        _dir: Some(dir),
    }
}

async fn postgres_db(key: MasterKey) -> Db {
    let admin_url = std::env::var("AIRLOCK_TEST_POSTGRES_URL").expect(
        "AIRLOCK_TEST_POSTGRES_URL is not set: run scripts/test, which starts a throw-away PostgreSQL",
    );
    let admin = raw_pool(&admin_url).await;
    let name = format!(
        "airlock_test_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    let store = Store::connect(&url, 8, key).await.unwrap();
    store.migrate().await.unwrap();
    let raw = raw_pool(&url).await;
    Db {
        store,
        url,
        raw,
        _dir: None,
    }
}

/// Declares each test once per engine: `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::sqlite_db(airlock_core::secrets::MasterKey::generate()).await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::postgres_db(airlock_core::secrets::MasterKey::generate()).await).await
                }
            )*
        }
    };
}

on_both_engines!(
    a_human_with_identities_on_all_three_providers,
    disabling_and_demoting_keep_an_enabled_admin_and_end_sign_ins,
    profile_versions_are_immutable,
    a_credential_round_trips_sealed_and_a_wrong_master_key_is_named,
    session_events_keep_their_order_under_concurrent_writers,
    sessions_follow_the_state_machine,
    audit_verify_detects_an_edited_row,
    audit_verify_detects_a_deleted_row_and_a_deleted_tail,
    concurrent_audit_writers_keep_one_chain,
    deliveries_survive_a_sender_that_dies,
    concurrent_senders_never_claim_one_delivery_twice,
    a_schedule_slot_fires_once,
    migrations_apply_again_to_a_database_with_data,
    hot_queries_use_an_index,
    an_audit_export_is_complete_oldest_first_and_can_start_at_a_time,
    a_long_session_is_read_a_page_at_a_time,
    session_lists_page_through_every_session_once,
    audit_search_reads_a_bounded_range_and_goes_on_from_it,
    warm_sandboxes_claimed_at_once_each_go_to_one_session,
    an_inbound_delivery_is_handled_by_one_claimant_at_a_time,
    inbound_retention_drops_payloads_then_records_and_never_unhandled_ones,
);

async fn warm_sandboxes_claimed_at_once_each_go_to_one_session(db: Db) {
    const N: usize = 12;
    let s = &db.store;
    let first = session_fixture(s).await;
    let mut sessions = vec![first.clone()];
    for _ in 1..N {
        sessions.push(s.create_session(new_session_like(&first)).await.unwrap());
    }
    for _ in 0..N {
        let sb = s
            .insert_sandbox(airlock_core::store::NewSandbox {
                role: "warm",
                profile_id: first.profile_id.clone(),
                profile_version: first.profile_version,
                image: "img".into(),
                session_id: None,
            })
            .await
            .unwrap();
        s.set_sandbox_ready(&sb.id).await.unwrap();
    }
    // Every session asks at the same moment, as a broker's session tasks do.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for session in sessions {
        let (s, start) = (s.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            s.claim_warm_sandbox(&session.profile_id, session.profile_version, &session.id)
                .await
                .unwrap()
                .map(|sb| (sb.id, sb.session_id))
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let claimed: Vec<_> = got.iter().flatten().collect();
    assert_eq!(
        claimed.len(),
        N,
        "some sessions found no warm sandbox: {got:?}"
    );
    let mut ids: Vec<_> = claimed.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "a sandbox went to two sessions");
}

async fn a_long_session_is_read_a_page_at_a_time(db: Db) {
    let s = &db.store;
    let session = session_fixture(s).await;
    let out = |i: usize| serde_json::json!({ "stream": "stdout", "text": format!("line {i}\n") });
    for i in 0..1500 {
        s.append_event(&session.id, EventKind::CommandOutput, &out(i))
            .await
            .unwrap();
    }
    // 1 state event + 1500 output events.
    assert_eq!(s.last_event_seq(&session.id).await.unwrap(), 1501);
    // Forwards: no read returns more than a page, and paging sees every event once.
    let first = s.events(&session.id, 0, 1_000_000).await.unwrap();
    assert_eq!(first.len() as i64, airlock_core::store::EVENT_PAGE);
    // Backwards, newest first, from any point.
    let latest = s.events_before(&session.id, i64::MAX, 3).await.unwrap();
    let seqs: Vec<i64> = latest.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1501, 1500, 1499]);
    assert_eq!(latest[0].payload["text"], "line 1499\n");
    let mut before = i64::MAX;
    let mut seen = 0;
    loop {
        let page = s.events_before(&session.id, before, 400).await.unwrap();
        let Some(last) = page.last() else { break };
        before = last.seq;
        seen += page.len();
    }
    assert_eq!(seen, 1501);

    // The latest prompt: the session's own until a follow-up, then the follow-up's.
    assert_eq!(
        s.latest_prompt(&session).await.unwrap(),
        "fix the flaky login test"
    );
    s.transition(&session.id, SessionState::Cancelled, Some("x"))
        .await
        .unwrap();
    s.follow_up(&session.id, "now the signup test")
        .await
        .unwrap();
    assert_eq!(
        s.latest_prompt(&session).await.unwrap(),
        "now the signup test"
    );
    // The current turn without its output: from the `turn` event on.
    s.append_event(&session.id, EventKind::CommandOutput, &out(9999))
        .await
        .unwrap();
    s.append_event(
        &session.id,
        EventKind::ToolCall,
        &serde_json::json!({ "tool": "read_file", "input": { "path": "a.rs" } }),
    )
    .await
    .unwrap();
    let turn = s.turn_events(&session.id, 100).await.unwrap();
    let kinds: Vec<EventKind> = turn.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Turn, EventKind::State, EventKind::ToolCall],
        "{turn:?}"
    );
}

async fn session_lists_page_through_every_session_once(db: Db) {
    let s = &db.store;
    let first = session_fixture(s).await;
    // Created in a burst, many share a millisecond: the id breaks the tie.
    for _ in 0..249 {
        s.create_session(new_session_like(&first)).await.unwrap();
    }
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        let page = s
            .list_sessions(&airlock_core::store::SessionFilter {
                limit: Some(40),
                before: before.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some((last.created_at, last.id.to_string()));
        seen.extend(page.into_iter().map(|x| (x.created_at, x.id)));
    }
    assert_eq!(seen.len(), 250);
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    newest_first.dedup();
    assert_eq!(seen, newest_first, "every session once, newest first");
}

async fn audit_search_reads_a_bounded_range_and_goes_on_from_it(db: Db) {
    let store = &db.store;
    let entries: Vec<NewAudit> = (0..2500).map(audit_entry).collect();
    for chunk in entries.chunks(500) {
        store.audit_batch(chunk).await.unwrap();
    }
    // Matches newest first, pages of 100, each going on where the last stopped.
    let mut before = None;
    let mut found = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.search_audit("cred-1", before, 100).await.unwrap();
        assert!(page.searched.1 - page.searched.0 < airlock_core::store::AUDIT_SEARCH_WINDOW);
        found.extend(page.entries.iter().map(|e| e.seq));
        pages += 1;
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let want: Vec<i64> = (0..2500i64)
        .rev()
        .filter(|i| format!("cred-{i}").contains("cred-1"))
        .map(|i| i + 1)
        .collect();
    assert_eq!(found, want);
    assert!(pages > 1, "{} matches fit in one page of 100?", want.len());
    // Nothing matches: one page that says what it searched.
    let none = store
        .search_audit("no such thing", None, 100)
        .await
        .unwrap();
    assert!(none.entries.is_empty());
    assert_eq!(none.searched, (1, 2500));
    assert_eq!(none.next_before, None);
    // Any number from an edited link is a range, not a panic.
    for before in [i64::MIN, -1, 0, 1, i64::MAX] {
        let page = store.search_audit("", Some(before), 10).await.unwrap();
        assert!(page.entries.len() <= 10, "{before}");
    }
}

async fn an_audit_export_is_complete_oldest_first_and_can_start_at_a_time(db: Db) {
    let store = &db.store;
    let entries: Vec<NewAudit> = (0..2500).map(audit_entry).collect();
    for chunk in entries.chunks(500) {
        store.audit_batch(chunk).await.unwrap();
    }
    // Pages of 1000, as the admin export and the CLI read them: all 2500, in order.
    let page_through = |text: &'static str, from: i64| async move {
        let mut after = from;
        let mut seen = Vec::new();
        loop {
            let page = store.search_audit_page(text, after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            seen.extend(page.into_iter().map(|e| e.seq));
        }
        seen
    };
    let all = page_through("", 0).await;
    assert_eq!(all, (1..=2500).collect::<Vec<i64>>());
    // A filter (any case) keeps the order and finds every match: cred-7, cred-17, ... and
    // cred-70..79, cred-170.., cred-700..799, ...
    let sevens = page_through("CRED-7", 0).await;
    let want: Vec<i64> = (0..2500i64)
        .filter(|i| format!("cred-{i}").starts_with("cred-7"))
        .map(|i| i + 1)
        .collect();
    assert_eq!(sevens, want);
    // From a time: everything was written now, so "since an hour ago" is everything and
    // "since tomorrow" is nothing.
    let now = airlock_core::ids::now_ms();
    let from = store.audit_seq_before(now - 3_600_000).await.unwrap();
    assert_eq!(page_through("", from).await.len(), 2500);
    let from = store.audit_seq_before(now + 86_400_000).await.unwrap();
    assert!(page_through("", from).await.is_empty());
}

/// The queries the admin pages, the CLI lists, the broker and the reconciler run on every
/// view or tick, as the store writes them: none may read a whole table.
const HOT_QUERIES: &[&str] = &[
    "SELECT id FROM sessions ORDER BY created_at DESC, id DESC LIMIT 50",
    "SELECT id FROM sessions WHERE state = 'running' ORDER BY created_at DESC, id DESC LIMIT 50",
    "SELECT id FROM sessions WHERE requester_id = 'h' ORDER BY created_at DESC, id DESC LIMIT 50",
    "SELECT id FROM sessions WHERE state = 'queued' ORDER BY created_at, id LIMIT 1",
    "SELECT seq FROM session_events WHERE session_id = 's' ORDER BY seq",
    "SELECT seq FROM session_events WHERE session_id = 's' AND seq < 9 ORDER BY seq DESC LIMIT 50",
    "SELECT seq FROM session_events WHERE session_id = 's' AND kind = 'turn' \
       ORDER BY seq DESC LIMIT 1",
    "SELECT seq FROM session_events WHERE session_id = 's' AND seq >= 3 \
       AND kind <> 'command_output' ORDER BY seq DESC LIMIT 100",
    "SELECT id FROM sessions WHERE (created_at < CAST('5' AS BIGINT) \
       OR (created_at = CAST('5' AS BIGINT) AND id < 'x')) ORDER BY created_at DESC, id DESC LIMIT 100",
    "SELECT MAX(seq) FROM audit_log",
    "SELECT seq FROM audit_log WHERE seq < 100 AND seq >= 1 AND lower(detail) LIKE '%x%' \
       ORDER BY seq DESC LIMIT 300",
    "SELECT MIN(seq) FROM audit_log WHERE at >= 5",
    "SELECT seq FROM audit_log WHERE session_id = 's' ORDER BY seq LIMIT 100",
    "SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 100",
    "SELECT id FROM snapshots WHERE session_id = 's' AND kind = 'session' \
       ORDER BY created_at DESC, id DESC LIMIT 1",
    "SELECT id FROM deliveries WHERE session_id = 's' ORDER BY id",
    "SELECT id FROM sandboxes WHERE state IN ('creating', 'ready', 'bound') ORDER BY created_at",
    "SELECT id FROM sandboxes WHERE session_id = 's'",
];

async fn hot_queries_use_an_index(db: Db) {
    let mut conn = db.raw.acquire().await.unwrap();
    let postgres = db.url.starts_with("postgres");
    if postgres {
        // The tables are empty, so the planner would rightly pick a scan; this asks whether
        // it could do otherwise.
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    for q in HOT_QUERIES {
        let (sql, col) = if postgres {
            (format!("EXPLAIN {q}"), 0)
        } else {
            (format!("EXPLAIN QUERY PLAN {q}"), 3)
        };
        let plan: Vec<String> = sqlx::query(&sql)
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, col))
            .collect();
        let full_scan = plan.iter().any(|line| {
            if postgres {
                line.contains("Seq Scan")
            } else {
                line.starts_with("SCAN ") && !line.contains(" USING ")
            }
        });
        assert!(!full_scan, "{q}\nreads a whole table:\n{}", plan.join("\n"));
    }
}

const PROFILE: &str = r#"
name = "rust-ci"
[agent]
kind = "command"
command = "cargo test"
"#;

async fn session_fixture(store: &Store) -> Session {
    let human = store
        .add_human("Ada Lovelace", "ada@example.com", Role::Member)
        .await
        .unwrap();
    let spec = ProfileSpec::from_toml(PROFILE).unwrap();
    let (profile_id, version) = match store.apply_profile(&spec, None).await.unwrap() {
        ApplyOutcome::Created {
            profile_id,
            version,
        } => (profile_id, version),
        other => panic!("unexpected {other:?}"),
    };
    store
        .create_session(NewSession {
            requester_id: human.id,
            surface: Surface::Cli,
            thread_ref: Default::default(),
            repo: "acme/web".into(),
            profile_id,
            profile_version: version,
            prompt: "fix the flaky login test".into(),
            trigger_id: None,
            thread_key: None,
            notify: None,
        })
        .await
        .unwrap()
}

async fn a_human_with_identities_on_all_three_providers(db: Db) {
    let s = &db.store;
    let ada = s
        .add_human("Ada Lovelace", "ada@example.com", Role::Admin)
        .await
        .unwrap();
    let bob = s
        .add_human("Bob", "bob@example.com", Role::Member)
        .await
        .unwrap();
    let accounts = [
        (Provider::Slack, "T0001", "U0ADA", "ada"),
        (Provider::Github, "github.com", "583231", "octocat"),
        (Provider::Discord, "G42", "80351110224678912", "ada#0001"),
    ];
    for (provider, workspace, external_id, handle) in accounts {
        s.link_identity(
            &ada.email,
            AccountRef {
                provider,
                workspace,
                external_id,
            },
            handle,
            true,
        )
        .await
        .unwrap();
    }
    for (provider, workspace, external_id, _) in accounts {
        let who = s
            .human_for_account(AccountRef {
                provider,
                workspace,
                external_id,
            })
            .await
            .unwrap();
        assert_eq!(
            who.as_ref().map(|h| h.id.as_str()),
            Some(ada.id.as_str()),
            "{provider}"
        );
    }
    let linked = s.list_identities(Some(&ada.id)).await.unwrap();
    let providers: Vec<Provider> = linked.iter().map(|i| i.provider).collect();
    assert_eq!(
        providers,
        vec![Provider::Discord, Provider::Github, Provider::Slack]
    );
    assert!(linked.iter().all(|i| i.verified_at.is_some()));

    // One account belongs to one human.
    let e = s
        .link_identity(
            &bob.id,
            AccountRef {
                provider: Provider::Github,
                workspace: "github.com",
                external_id: "583231",
            },
            "octocat",
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the github account 583231 is already linked to a human; unlink it first"
    );
    // The same user id in another Slack workspace is another account.
    let other = AccountRef {
        provider: Provider::Slack,
        workspace: "T0002",
        external_id: "U0ADA",
    };
    s.link_identity(&bob.id, other.clone(), "bob", false)
        .await
        .unwrap();
    assert_eq!(
        s.human_for_account(other).await.unwrap().unwrap().id,
        bob.id
    );

    let e = s
        .add_human("Ada again", "ADA@example.com", Role::Member)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "a human with email ADA@example.com already exists"
    );

    let slack = linked
        .iter()
        .find(|i| i.provider == Provider::Slack)
        .unwrap();
    s.unlink_identity(&slack.id).await.unwrap();
    let gone = AccountRef {
        provider: Provider::Slack,
        workspace: "T0001",
        external_id: "U0ADA",
    };
    assert_eq!(s.human_for_account(gone).await.unwrap(), None);
    assert!(matches!(
        s.unlink_identity(&slack.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.find_human("ADA@EXAMPLE.COM").await.unwrap().id, ada.id);
}

async fn profile_versions_are_immutable(db: Db) {
    let s = &db.store;
    let v1 = ProfileSpec::from_toml(PROFILE).unwrap();
    let ApplyOutcome::Created {
        profile_id,
        version: 1,
    } = s.apply_profile(&v1, Some("cli:root")).await.unwrap()
    else {
        panic!("first apply should create version 1")
    };
    // Same content, different formatting: nothing changes.
    let same = ProfileSpec::from_toml(&format!("# a comment\n{PROFILE}\n\n")).unwrap();
    assert_eq!(
        s.apply_profile(&same, None).await.unwrap(),
        ApplyOutcome::Unchanged {
            profile_id: profile_id.clone(),
            version: 1
        }
    );
    let mut v2 = v1.clone();
    v2.limits.memory_mb = 1024;
    assert_eq!(
        s.apply_profile(&v2, None).await.unwrap(),
        ApplyOutcome::Updated {
            profile_id: profile_id.clone(),
            version: 2
        }
    );
    assert_eq!(
        s.profile_version(&profile_id, Some(1)).await.unwrap().spec,
        v1
    );
    assert_eq!(s.profile_version(&profile_id, None).await.unwrap().spec, v2);
    assert_eq!(s.find_profile("rust-ci").await.unwrap().current_version, 2);
    assert_eq!(s.list_profile_versions(&profile_id).await.unwrap().len(), 2);

    // The database itself refuses to rewrite or remove a version.
    let update = sqlx::query("UPDATE profile_versions SET spec = '{}' WHERE version = 1")
        .execute(&db.raw)
        .await;
    assert!(update.is_err(), "an UPDATE of a profile version must fail");
    let delete = sqlx::query("DELETE FROM profile_versions WHERE version = 1")
        .execute(&db.raw)
        .await;
    assert!(delete.is_err(), "a DELETE of a profile version must fail");
    assert_eq!(
        s.profile_version(&profile_id, Some(1)).await.unwrap().spec,
        v1
    );
}

async fn a_credential_round_trips_sealed_and_a_wrong_master_key_is_named(db: Db) {
    let s = &db.store;
    let value = "ghp_R0undTr1pSecretValue0123456789abcdef";
    let replaced = s
        .set_credential(
            "github",
            CredentialKind::GithubToken,
            &SecretValue::new(value.into()),
            Some("cli:root"),
        )
        .await
        .unwrap();
    assert!(!replaced);
    assert_eq!(
        s.reveal_credential("github").await.unwrap().expose(),
        value.as_bytes()
    );

    // What is stored is not the value, nor contains it.
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT sealed FROM credentials WHERE name = 'github'")
            .fetch_one(&db.raw)
            .await
            .unwrap();
    assert_ne!(stored, value.as_bytes());
    assert!(!stored.windows(value.len()).any(|w| w == value.as_bytes()));
    // Listing shows the name and kind only.
    let listed = serde_json::to_string(&s.list_credentials().await.unwrap()).unwrap();
    assert!(listed.contains("github-token") && !listed.contains(value));

    // Rotation replaces the value.
    assert!(s
        .set_credential(
            "github",
            CredentialKind::GithubToken,
            &SecretValue::new(b"ghp_new".to_vec()),
            None
        )
        .await
        .unwrap());
    assert_eq!(
        s.reveal_credential("github").await.unwrap().expose(),
        b"ghp_new"
    );

    // The same database opened with another master key: refused at start-up, clearly.
    let other = Store::connect(&db.url, 2, MasterKey::generate())
        .await
        .unwrap();
    let e = other.migrate().await.unwrap_err().to_string();
    assert!(
        e.starts_with("the master key (")
            && e.contains("is not the one this database was set up with"),
        "{e}"
    );
    let e = other
        .reveal_credential("github")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be decrypted with the configured master key"),
        "{e}"
    );
    assert!(!e.contains("ghp_new"));

    s.delete_credential("github").await.unwrap();
    assert_eq!(
        s.reveal_credential("github").await.unwrap_err().to_string(),
        "no credential `github`; see `airlock credential list`"
    );
    let e = s
        .set_credential(
            "bad name",
            CredentialKind::Generic,
            &SecretValue::new(b"x".to_vec()),
            None,
        )
        .await;
    assert!(matches!(e, Err(StoreError::Invalid(_))));
}

async fn session_events_keep_their_order_under_concurrent_writers(db: Db) {
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let session = session_fixture(&db.store).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = db.store.clone();
        let id = session.id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                store
                    .append_event(
                        &id,
                        EventKind::CommandOutput,
                        &serde_json::json!({ "writer": w, "i": i }),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = db.store.events(&session.id, 0, 10_000).await.unwrap();
    assert_eq!(events.len(), 1 + WRITERS * EACH);
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=(1 + WRITERS * EACH) as i64).collect::<Vec<_>>(),
        "gap-free and ordered"
    );
    assert_eq!(events[0].kind, EventKind::State);
    // Each writer's own events appear in the order it wrote them.
    let mut last = [-1i64; WRITERS];
    for e in &events[1..] {
        let w = e.payload["writer"].as_u64().unwrap() as usize;
        let i = e.payload["i"].as_i64().unwrap();
        assert_eq!(i, last[w] + 1, "writer {w} out of order at seq {}", e.seq);
        last[w] = i;
    }
    assert_eq!(
        db.store.session(&session.id).await.unwrap().last_event_seq,
        (1 + WRITERS * EACH) as i64
    );
    // Events are append-only.
    assert!(sqlx::query("UPDATE session_events SET payload = '{}'")
        .execute(&db.raw)
        .await
        .is_err());
}

async fn sessions_follow_the_state_machine(db: Db) {
    let s = &db.store;
    let session = session_fixture(s).await;
    assert_eq!(session.state, SessionState::Queued);
    let e = s
        .transition(&session.id, SessionState::Running, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("session {} is queued; it cannot become running", session.id)
    );
    s.transition(&session.id, SessionState::Starting, None)
        .await
        .unwrap();
    let running = s
        .transition(&session.id, SessionState::Running, None)
        .await
        .unwrap();
    assert!(running.started_at.is_some() && running.finished_at.is_none());
    let done = s
        .transition(
            &session.id,
            SessionState::Cancelled,
            Some("cancelled by ada@example.com from the CLI"),
        )
        .await
        .unwrap();
    assert_eq!(done.state, SessionState::Cancelled);
    assert_eq!(
        done.reason.as_deref(),
        Some("cancelled by ada@example.com from the CLI")
    );
    assert!(done.finished_at.is_some());
    assert!(s
        .transition(&session.id, SessionState::Failed, Some("x"))
        .await
        .is_err());
    let states: Vec<String> = s
        .events(&session.id, 0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::State)
        .map(|e| e.payload["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["queued", "starting", "running", "cancelled"]);
    // A follow-up turn reopens it.
    let again = s
        .transition(&session.id, SessionState::Queued, None)
        .await
        .unwrap();
    assert!(again.finished_at.is_none());

    let listed = s
        .list_sessions(&airlock_core::store::SessionFilter {
            state: Some(SessionState::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let bad = NewSession {
        repo: "not a repo".into(),
        ..new_session_like(&session)
    };
    assert!(matches!(
        s.create_session(bad).await,
        Err(StoreError::Invalid(_))
    ));
}

fn new_session_like(s: &Session) -> NewSession {
    NewSession {
        requester_id: s.requester_id.clone(),
        surface: s.surface,
        thread_ref: s.thread_ref.clone(),
        repo: s.repo.clone(),
        profile_id: s.profile_id.clone(),
        profile_version: s.profile_version,
        prompt: s.prompt.clone(),
        trigger_id: None,
        thread_key: None,
        notify: None,
    }
}

fn audit_entry(i: usize) -> NewAudit {
    NewAudit {
        actor: "cli:root".into(),
        action: "credential.set".into(),
        target: format!("cred-{i}"),
        session_id: None,
        detail: serde_json::json!({ "i": i }),
    }
}

/// Lets the test play an attacker with database access: the append-only triggers go first.
async fn disable_audit_protection(db: &Db) {
    let stmts: &[&str] = match db.store.kind() {
        DatabaseKind::Sqlite => &[
            "DROP TRIGGER audit_log_no_update",
            "DROP TRIGGER audit_log_no_delete",
        ],
        DatabaseKind::Postgres => &["ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"],
    };
    for sql in stmts {
        sqlx::query(sql).execute(&db.raw).await.unwrap();
    }
}

async fn audit_verify_detects_an_edited_row(db: Db) {
    let s = &db.store;
    for i in 1..=10 {
        s.audit(audit_entry(i)).await.unwrap();
    }
    let verdict = s.verify_audit().await.unwrap();
    assert!(verdict.is_intact(), "{:?}", verdict.problems);
    assert_eq!(verdict.rows_checked, 10);
    // Without tampering tools, the log cannot be changed at all.
    assert!(
        sqlx::query("UPDATE audit_log SET target = 'x' WHERE seq = 4")
            .execute(&db.raw)
            .await
            .is_err()
    );

    disable_audit_protection(&db).await;
    sqlx::query("UPDATE audit_log SET detail = '{\"i\":400}' WHERE seq = 4")
        .execute(&db.raw)
        .await
        .unwrap();
    let verdict = s.verify_audit().await.unwrap();
    assert_eq!(
        verdict.problems,
        vec!["row 4 was edited: its content does not match its hash"]
    );
}

async fn audit_verify_detects_a_deleted_row_and_a_deleted_tail(db: Db) {
    let s = &db.store;
    s.audit_batch(&(1..=10).map(audit_entry).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(s.verify_audit().await.unwrap().is_intact());
    disable_audit_protection(&db).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 6")
        .execute(&db.raw)
        .await
        .unwrap();
    assert_eq!(
        s.verify_audit().await.unwrap().problems,
        vec!["row 6 is missing"]
    );
    sqlx::query("DELETE FROM audit_log WHERE seq = 10")
        .execute(&db.raw)
        .await
        .unwrap();
    assert_eq!(
        s.verify_audit().await.unwrap().problems,
        vec!["row 6 is missing", "the last row (10) is missing"]
    );
}

async fn concurrent_audit_writers_keep_one_chain(db: Db) {
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                if i % 5 == 0 {
                    store
                        .audit_batch(&[audit_entry(w * 100 + i), audit_entry(w * 100 + i + 50)])
                        .await
                        .unwrap();
                } else {
                    store.audit(audit_entry(w * 100 + i)).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let verdict = db.store.verify_audit().await.unwrap();
    assert!(verdict.is_intact(), "{:?}", verdict.problems);
    assert_eq!(verdict.rows_checked, 6 * 18);
    let tail = db.store.audit_tail(3).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![106, 107, 108]
    );
}

fn delivery(n: usize) -> NewDelivery {
    NewDelivery {
        session_id: None,
        surface: Surface::Slack,
        target: serde_json::json!({ "channel": "C1", "thread_ts": "1.2" }),
        payload: serde_json::json!({ "text": format!("update {n}") }),
    }
}

async fn deliveries_survive_a_sender_that_dies(db: Db) {
    let s = &db.store;
    for n in 0..3 {
        s.enqueue_delivery(&delivery(n)).await.unwrap();
    }
    let claimed = s.claim_deliveries("server-a", 10, 300).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].payload["text"], "update 0");
    // While server-a holds the lease nobody else gets them.
    assert!(s
        .claim_deliveries("server-b", 10, 60_000)
        .await
        .unwrap()
        .is_empty());
    // server-a dies without finishing; after the lease runs out server-b sends them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reclaimed = loop {
        let got = s.claim_deliveries("server-b", 10, 60_000).await.unwrap();
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reclaimed.len(), 3);
    assert!(reclaimed.iter().all(|d| d.attempts == 2));
    assert!(
        s.complete_delivery(reclaimed[0].id, "server-a")
            .await
            .is_err(),
        "a lost lease cannot complete"
    );
    s.complete_delivery(reclaimed[0].id, "server-b")
        .await
        .unwrap();
    s.fail_delivery(
        reclaimed[1].id,
        "server-b",
        "429 Too Many Requests",
        Some(0),
    )
    .await
    .unwrap();
    s.fail_delivery(reclaimed[2].id, "server-b", "channel_not_found", None)
        .await
        .unwrap();
    let again = s.claim_deliveries("server-b", 10, 60_000).await.unwrap();
    assert_eq!(
        again.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![reclaimed[1].id]
    );
    assert_eq!(
        again[0].last_error.as_deref(),
        Some("429 Too Many Requests")
    );
    let failed = s.delivery(reclaimed[2].id).await.unwrap();
    assert_eq!(failed.state, airlock_core::domain::DeliveryState::Failed);
}

async fn concurrent_senders_never_claim_one_delivery_twice(db: Db) {
    for n in 0..60 {
        db.store.enqueue_delivery(&delivery(n)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("sender-{w}");
            let mut mine = Vec::new();
            loop {
                let got = store.claim_deliveries(&owner, 4, 60_000).await.unwrap();
                if got.is_empty() {
                    break mine;
                }
                for d in got {
                    store.complete_delivery(d.id, &owner).await.unwrap();
                    mine.push(d.id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 60, "every delivery sent once");
    assert_eq!(unique.len(), 60);
}

async fn a_schedule_slot_fires_once(db: Db) {
    let s = &db.store;
    let session = session_fixture(s).await;
    let trigger = s
        .create_trigger(&NewTrigger {
            name: "weekly-deps".into(),
            kind: TriggerKind::Schedule,
            config: serde_json::json!({ "cron": "0 9 * * MON", "tz": "Europe/Paris" }),
            profile_id: session.profile_id.clone(),
            repo: "acme/web".into(),
            reply: serde_json::json!({ "slack": { "channel": "C1" } }),
            owner_id: session.requester_id.clone(),
            secret_credential: None,
        })
        .await
        .unwrap();
    assert!(trigger.enabled);
    assert!(s.claim_trigger_fire(&trigger.id, 1_000).await.unwrap());
    assert!(
        !s.claim_trigger_fire(&trigger.id, 1_000).await.unwrap(),
        "same slot twice"
    );
    assert!(s.claim_trigger_fire(&trigger.id, 2_000).await.unwrap());
    assert_eq!(
        s.trigger("weekly-deps").await.unwrap().last_fired_at,
        Some(2_000)
    );
    let dup = s
        .create_trigger(&NewTrigger {
            name: "weekly-deps".into(),
            kind: TriggerKind::Webhook,
            config: serde_json::json!({}),
            profile_id: session.profile_id,
            repo: "acme/web".into(),
            reply: serde_json::json!({}),
            owner_id: session.requester_id,
            secret_credential: Some("hook-secret".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        dup.to_string(),
        "a trigger named weekly-deps already exists"
    );
}

async fn migrations_apply_again_to_a_database_with_data(db: Db) {
    let session = session_fixture(&db.store).await;
    db.store.audit(audit_entry(1)).await.unwrap();
    // Opening again (any key: only migrations are looked at here) finds nothing pending, and
    // migrating again, as every `airlock up` does, keeps everything.
    let again = Store::connect(&db.url, 2, MasterKey::generate())
        .await
        .unwrap();
    assert!(again.pending_migrations().await.unwrap().is_empty());
    assert_eq!(
        db.store.session(&session.id).await.unwrap().prompt,
        "fix the flaky login test"
    );
    assert!(db.store.verify_audit().await.unwrap().is_intact());
    db.store.migrate().await.unwrap();
    assert_eq!(
        db.store
            .list_sessions(&Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The request that stored a delivery and the sweep of unhandled ones meet: of any number of
/// concurrent claims, one wins; a claim that outlives its handler (a crash) ends with its
/// lease, and a processed delivery is never claimed again.
async fn an_inbound_delivery_is_handled_by_one_claimant_at_a_time(db: Db) {
    let s = &db.store;
    let inbound = s
        .record_inbound("github", "d-1", "issues", "{}")
        .await
        .unwrap()
        .unwrap();
    let claims = join_all(
        (0..8)
            .map(|n| {
                let (s, id) = (s.clone(), inbound.id.clone());
                tokio::spawn(async move {
                    s.claim_inbound(&id, &format!("p{n}"), 60_000)
                        .await
                        .unwrap()
                })
            })
            .collect(),
    )
    .await;
    assert_eq!(claims.iter().filter(|c| **c).count(), 1, "{claims:?}");
    // Still unprocessed, but the sweep neither lists it nor can take it while the lease
    // runs; the claimant renews it, nobody else can.
    assert!(s
        .unprocessed_inbound("github", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(!s.claim_inbound(&inbound.id, "sweep", 60_000).await.unwrap());
    let winner = format!("p{}", claims.iter().position(|c| *c).unwrap());
    assert!(s
        .renew_inbound_claim(&inbound.id, &winner, 60_000)
        .await
        .unwrap());
    assert!(!s
        .renew_inbound_claim(&inbound.id, "p-other", 60_000)
        .await
        .unwrap());
    // A lease that ran out (its handler died) can be taken over.
    let other = s
        .record_inbound("github", "d-2", "issues", "{}")
        .await
        .unwrap()
        .unwrap();
    assert!(s.claim_inbound(&other.id, "crashed", 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let listed = s.unprocessed_inbound("github", 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| &i.id).collect::<Vec<_>>(),
        [&other.id]
    );
    assert!(s.claim_inbound(&other.id, "sweep", 60_000).await.unwrap());
    // The crashed claimant, back late, cannot take it back by renewing.
    assert!(!s
        .renew_inbound_claim(&other.id, "crashed", 60_000)
        .await
        .unwrap());
    // Stored claimed (the request that stored it handles it): nobody else can take it or
    // sees it until the claim lapses; its owner renews it.
    let held = s
        .record_inbound_claimed(("github", "d-3", "issues", "{}"), "p-store", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(!s.claim_inbound(&held.id, "sweep", 60_000).await.unwrap());
    assert!(s
        .renew_inbound_claim(&held.id, "p-store", 60_000)
        .await
        .unwrap());
    let lapsing = s
        .record_inbound_claimed(("github", "d-4", "issues", "{}"), "p-dead", 1)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let listed: Vec<String> = s
        .unprocessed_inbound("github", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(
        listed.contains(&lapsing.id) && !listed.contains(&held.id),
        "{listed:?}"
    );
    assert!(s
        .record_inbound_claimed(("github", "d-3", "issues", "{}"), "p-again", 60_000)
        .await
        .unwrap()
        .is_none());
    // Done is done.
    s.finish_inbound(&inbound.id, None).await.unwrap();
    assert!(!s.claim_inbound(&inbound.id, "sweep", 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!s.claim_inbound(&inbound.id, "sweep", 1).await.unwrap());
}

/// `retention.*`: an ignored delivery's payload goes after `ignored_payload_hours` (at once
/// by default), a handled one's after `delivery_payload_days`, the whole record after
/// `delivery_days`; an unhandled delivery keeps everything however old it is.
async fn inbound_retention_drops_payloads_then_records_and_never_unhandled_ones(db: Db) {
    use airlock_core::config::RetentionConfig;
    let s = &db.store;
    let raw = raw_pool(&db.url).await;
    const DAY: i64 = 24 * 3600 * 1000;
    let now = airlock_core::ids::now_ms();
    for (key, verdict, processed_days_ago) in [
        ("ignored-now", Some("nothing"), Some(0)),
        ("ignored-2h", Some("nothing"), Some(-1)),
        ("acted-3d", None, Some(3)),
        ("acted-8d", None, Some(8)),
        ("acted-40d", None, Some(40)),
        ("unhandled-400d", None, None),
    ] {
        let i = s
            .record_inbound("github", key, "issue_comment", "{\"body\":1}")
            .await
            .unwrap()
            .unwrap();
        if let Some(days) = processed_days_ago {
            match verdict {
                Some(why) => s.finish_inbound_ignored(&i.id, why, true).await.unwrap(),
                None => s.finish_inbound(&i.id, None).await.unwrap(),
            }
            // -1: two hours ago.
            let at = if days < 0 {
                now - 2 * 3600 * 1000
            } else {
                now - days * DAY
            };
            sqlx::query("UPDATE inbound SET processed_at = $1 WHERE id = $2")
                .bind(at)
                .bind(&i.id)
                .execute(&raw)
                .await
                .unwrap();
        } else {
            sqlx::query("UPDATE inbound SET received_at = $1 WHERE id = $2")
                .bind(now - 400 * DAY)
                .bind(&i.id)
                .execute(&raw)
                .await
                .unwrap();
        }
    }
    let state = || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT delivery_id, payload FROM inbound ORDER BY delivery_id")
                .fetch_all(&raw)
                .await
                .unwrap();
        rows.into_iter()
            .map(|(k, p)| format!("{k}={}", if p.is_empty() { "-" } else { "kept" }))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let keep_ignored = RetentionConfig {
        ignored_payload_hours: 1,
        ..RetentionConfig::default()
    };
    let p = s.prune_inbound(&keep_ignored).await.unwrap();
    assert_eq!((p.payloads, p.deleted), (3, 1), "{p:?}");
    assert_eq!(
        state().await,
        "acted-3d=kept acted-8d=- ignored-2h=- ignored-now=kept unhandled-400d=kept"
    );
    // Again: nothing more to do.
    let p = s.prune_inbound(&keep_ignored).await.unwrap();
    assert_eq!((p.payloads, p.deleted), (0, 0));
    // Tighter settings: every handled payload now, records after 8 days.
    let tight = RetentionConfig {
        delivery_days: 8,
        delivery_payload_days: 0,
        ignored_payload_hours: 0,
    };
    s.prune_inbound(&tight).await.unwrap();
    assert_eq!(
        state().await,
        "acted-3d=- ignored-2h=- ignored-now=- unhandled-400d=kept"
    );
    // Decided from the payload alone: recorded as handled, with its verdict, once.
    assert!(s
        .record_ignored(
            "github",
            "needs-nothing",
            "issue_comment",
            "",
            "no request for Airlock in it"
        )
        .await
        .unwrap());
    assert!(!s
        .record_ignored("github", "needs-nothing", "issue_comment", "", "again")
        .await
        .unwrap());
    let (verdict, processed): (Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT verdict, processed_at FROM inbound WHERE delivery_id = 'needs-nothing'",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    assert_eq!(verdict.as_deref(), Some("no request for Airlock in it"));
    assert!(processed.is_some());
    assert!(s
        .unprocessed_inbound("github", 10)
        .await
        .unwrap()
        .iter()
        .all(|i| i.delivery_id != "needs-nothing"));
    // With no time to keep it, an ignored delivery's payload is dropped when it is marked.
    let i = s
        .record_inbound("github", "ignored-at-once", "issue_comment", "{}")
        .await
        .unwrap()
        .unwrap();
    s.finish_inbound_ignored(&i.id, "nothing", false)
        .await
        .unwrap();
    assert!(state().await.contains("ignored-at-once=-"));
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<bool>>) -> Vec<bool> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Disable, enable and role changes: audited with the change, the last enabled admin kept,
/// a disabled human signed out and unable to sign in.
async fn disabling_and_demoting_keep_an_enabled_admin_and_end_sign_ins(db: Db) {
    let s = &db.store;
    let ada = s
        .add_human("Ada", "ada@example.com", Role::Admin)
        .await
        .unwrap();
    let bob = s
        .add_human("Bob", "bob@example.com", Role::Member)
        .await
        .unwrap();
    s.set_password(&bob.id, "correct horse battery")
        .await
        .unwrap();
    let entry = |action: &str| airlock_core::store::NewAudit {
        actor: format!("human:{}", ada.id),
        action: action.into(),
        target: bob.id.to_string(),
        session_id: None,
        detail: serde_json::json!({}),
    };
    let (token, _) = s
        .sign_in("bob@example.com", "correct horse battery")
        .await
        .unwrap()
        .unwrap();
    let off = s
        .set_human_disabled(&bob.id, true, entry("human.disable"))
        .await
        .unwrap();
    let since = off.disabled_at.expect("disabled");
    assert!(s.web_session(&token).await.unwrap().is_none(), "signed out");
    assert!(s
        .sign_in("bob@example.com", "correct horse battery")
        .await
        .unwrap()
        .is_none());
    // Disabling again keeps the first time.
    let again = s
        .set_human_disabled(&bob.id, true, entry("human.disable"))
        .await
        .unwrap();
    assert_eq!(again.disabled_at, Some(since));
    let on = s
        .set_human_disabled(&bob.id, false, entry("human.enable"))
        .await
        .unwrap();
    assert_eq!(on.disabled_at, None);
    assert!(s
        .sign_in("bob@example.com", "correct horse battery")
        .await
        .unwrap()
        .is_some());
    // Ada is the only enabled admin: neither demoted nor disabled.
    let demote = s
        .set_human_role(&ada.id, Role::Member, entry("human.role"))
        .await
        .unwrap_err();
    assert!(
        demote.to_string().contains("last enabled admin"),
        "{demote}"
    );
    let disable = s
        .set_human_disabled(&ada.id, true, entry("human.disable"))
        .await
        .unwrap_err();
    assert!(
        disable.to_string().contains("last enabled admin"),
        "{disable}"
    );
    s.set_human_role(&bob.id, Role::Admin, entry("human.role"))
        .await
        .unwrap();
    s.set_human_role(&ada.id, Role::Member, entry("human.role"))
        .await
        .unwrap();
    let actions: Vec<String> = s
        .audit_tail(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "human.disable",
            "human.disable",
            "human.enable",
            "human.role",
            "human.role"
        ],
        "the refused changes wrote no row"
    );
}
