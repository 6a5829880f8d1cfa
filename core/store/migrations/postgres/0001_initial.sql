-- Airlock's initial schema (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql.
-- Times are milliseconds since the Unix epoch; structured values are JSON text.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE humans (
    id            TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    email         TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    password_hash TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX humans_email ON humans (lower(email));

CREATE TABLE identities (
    id          TEXT PRIMARY KEY,
    human_id    TEXT NOT NULL REFERENCES humans (id) ON DELETE CASCADE,
    provider    TEXT NOT NULL CHECK (provider IN ('slack', 'github', 'discord')),
    workspace   TEXT NOT NULL,
    external_id TEXT NOT NULL,
    handle      TEXT NOT NULL,
    verified_at BIGINT,
    created_at  BIGINT NOT NULL,
    UNIQUE (provider, workspace, external_id)
);
CREATE INDEX identities_human ON identities (human_id);

CREATE TABLE profiles (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    current_version BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE profile_versions (
    profile_id TEXT NOT NULL REFERENCES profiles (id),
    version    BIGINT NOT NULL,
    spec       TEXT NOT NULL,
    spec_hash  TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (profile_id, version)
);

CREATE FUNCTION airlock_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only and cannot be changed or removed', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER profile_versions_immutable BEFORE UPDATE OR DELETE ON profile_versions
FOR EACH ROW EXECUTE FUNCTION airlock_forbid_change();

CREATE TABLE credentials (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    sealed     BYTEA NOT NULL,
    key_id     TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE triggers (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    kind              TEXT NOT NULL CHECK (kind IN ('webhook', 'schedule', 'github')),
    config            TEXT NOT NULL,
    profile_id        TEXT NOT NULL REFERENCES profiles (id),
    repo              TEXT NOT NULL,
    reply             TEXT NOT NULL,
    owner_id          TEXT NOT NULL REFERENCES humans (id),
    secret_credential TEXT,
    enabled           BIGINT NOT NULL DEFAULT 1,
    last_fired_at     BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    requester_id    TEXT NOT NULL REFERENCES humans (id),
    surface         TEXT NOT NULL CHECK (surface IN ('cli', 'slack', 'github', 'discord', 'trigger', 'web')),
    thread_ref      TEXT NOT NULL,
    repo            TEXT NOT NULL,
    profile_id      TEXT NOT NULL,
    profile_version BIGINT NOT NULL,
    prompt          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'starting', 'running', 'finishing', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    reason          TEXT,
    trigger_id      TEXT REFERENCES triggers (id),
    last_event_seq  BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    FOREIGN KEY (profile_id, profile_version) REFERENCES profile_versions (profile_id, version)
);
CREATE INDEX sessions_state ON sessions (state, created_at);
CREATE INDEX sessions_requester ON sessions (requester_id, created_at);

CREATE TABLE session_events (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TRIGGER session_events_no_update BEFORE UPDATE ON session_events
FOR EACH ROW EXECUTE FUNCTION airlock_forbid_change();

CREATE TABLE deliveries (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id  TEXT REFERENCES sessions (id),
    surface     TEXT NOT NULL,
    target      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    not_before  BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error  TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (state, not_before);

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    session_id TEXT,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION airlock_forbid_change();

-- The head of the audit chain; see the SQLite migration for why.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
