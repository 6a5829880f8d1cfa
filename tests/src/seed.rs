//! Fills a database the way a team's years of use would: many sessions, a long audit log,
//! one session with a long log. Rows are generated inside the database (a recursive CTE on
//! SQLite, `generate_series` on PostgreSQL), so a million of them take seconds.
//!
//! Seeded audit rows carry placeholder hashes: `airlock audit verify` reports them as broken,
//! which is right, since they were not written by Airlock.

use sqlx::AnyPool;

/// What [`seed`] made.
pub struct Seeded {
    /// The session with [`LONG_SESSION_EVENTS`] output events.
    pub long_session: String,
    pub sessions: i64,
    pub audit_rows: i64,
}

/// Output events in the long session, 1 KB each.
pub const LONG_SESSION_EVENTS: i64 = 5000;

/// Adds `sessions` finished sessions of the first human and profile (each with one event) and
/// `audit_rows` audit entries spread over them, after whatever is there.
pub async fn seed(pool: &AnyPool, url: &str, sessions: i64, audit_rows: i64) -> Seeded {
    let postgres = url.starts_with("postgres");
    let one = |sql: &'static str| sqlx::query_scalar::<_, String>(sql).fetch_one(pool);
    let human = one("SELECT id FROM humans ORDER BY created_at LIMIT 1")
        .await
        .expect("seed needs a human");
    let profile = one("SELECT id FROM profiles ORDER BY created_at LIMIT 1")
        .await
        .expect("seed needs a profile");
    let start = airlock_core::ids::now_ms() - sessions * 1000;
    // Numbers 1..=n as a row source, on either engine.
    let series = |n: i64| {
        if postgres {
            format!("generate_series(1, {n}) AS n(i)")
        } else {
            format!(
                "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
                 SELECT i FROM s) AS n"
            )
        }
    };
    let exec = |sql: String| async move {
        sqlx::query(&sql)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("seeding failed: {e}\n{sql}"));
    };
    exec(format!(
        "INSERT INTO sessions (id, requester_id, surface, thread_ref, repo, profile_id, \
           profile_version, prompt, state, reason, last_event_seq, created_at, updated_at, \
           started_at, finished_at) \
         SELECT 'ses_seed' || CAST(1000000 + i AS TEXT), '{human}', 'cli', '{{}}', 'acme/web', \
           '{profile}', 1, 'seeded prompt number ' || CAST(i AS TEXT), \
           CASE WHEN i % 20 = 0 THEN 'failed' ELSE 'succeeded' END, NULL, 1, \
           {start} + i * 1000, {start} + i * 1000, {start} + i * 1000, {start} + i * 1000 + 500 \
         FROM {}",
        series(sessions)
    ))
    .await;
    exec(format!(
        "INSERT INTO session_events (session_id, seq, at, kind, payload) \
         SELECT 'ses_seed' || CAST(1000000 + i AS TEXT), 1, {start} + i * 1000, 'state', \
           '{{\"from\":null,\"to\":\"queued\"}}' FROM {}",
        series(sessions)
    ))
    .await;
    // The newest seeded session has a long log.
    let long_session = format!("ses_seed{}", 1_000_000 + sessions);
    let line = "x".repeat(1000);
    exec(format!(
        "INSERT INTO session_events (session_id, seq, at, kind, payload) \
         SELECT '{long_session}', 1 + i, {start} + i, 'command_output', \
           '{{\"stream\":\"stdout\",\"text\":\"' || CAST(i AS TEXT) || ' {line}\\n\"}}' FROM {}",
        series(LONG_SESSION_EVENTS)
    ))
    .await;
    exec(format!(
        "UPDATE sessions SET last_event_seq = {} WHERE id = '{long_session}'",
        LONG_SESSION_EVENTS + 1
    ))
    .await;
    let first_seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
        .fetch_one(pool)
        .await
        .unwrap();
    let audit_start = airlock_core::ids::now_ms() - audit_rows * 10;
    exec(format!(
        "INSERT INTO audit_log (seq, at, actor, action, target, session_id, detail, prev_hash, hash) \
         SELECT {first_seq} + i, {audit_start} + i * 10, 'human:{human}', \
           CASE i % 4 WHEN 0 THEN 'egress.request' WHEN 1 THEN 'egress.denied' \
             WHEN 2 THEN 'session.start' ELSE 'credential.use' END, \
           'api.example.com', 'ses_seed' || CAST(1000001 + i % {sessions} AS TEXT), \
           '{{\"method\":\"GET\",\"path\":\"/v1/items/' || CAST(i AS TEXT) || '\",\"status\":200}}', \
           'seed', 'seed' \
         FROM {}",
        series(audit_rows)
    ))
    .await;
    // Fresh statistics, as a database that grew over time would have.
    exec("ANALYZE".to_string()).await;
    Seeded {
        long_session,
        sessions,
        audit_rows,
    }
}
