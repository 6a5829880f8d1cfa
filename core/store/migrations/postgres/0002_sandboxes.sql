-- Sandboxes, the tokens bound to them, snapshots, and session leases (postgres).
-- Keep in step with ../sqlite/0002_sandboxes.sql.

-- Which server runs a session, until when (renewed while it runs). A restarted server takes
-- back its own sessions at once; another server takes them once the lease has run out.
ALTER TABLE sessions ADD COLUMN lease_owner TEXT;
ALTER TABLE sessions ADD COLUMN lease_until BIGINT;
ALTER TABLE sessions ADD COLUMN sandbox_id TEXT;
CREATE INDEX sessions_lease ON sessions (state, lease_until);

-- Every sandbox Airlock starts. The container carries the same id in its labels; the runtime
-- is the truth about what exists, this table about what it was for.
CREATE TABLE sandboxes (
    id              TEXT PRIMARY KEY,
    container_id    TEXT,
    role            TEXT NOT NULL CHECK (role IN ('session', 'warm', 'build')),
    profile_id      TEXT NOT NULL REFERENCES profiles (id),
    profile_version BIGINT NOT NULL,
    image           TEXT NOT NULL,
    session_id      TEXT REFERENCES sessions (id),
    address         TEXT,
    state           TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'bound', 'gone')),
    reason          TEXT,
    -- The last durable message from sandboxd the server has stored (replay starts after it).
    acked           BIGINT NOT NULL DEFAULT 0,
    -- The process running the session's agent, if any.
    agent_exec      BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    ended_at        BIGINT
);
CREATE INDEX sandboxes_state ON sandboxes (state, role, profile_id);
CREATE INDEX sandboxes_session ON sandboxes (session_id);

-- Tokens handed to sandboxes (decision 0002): only their SHA-256 is kept.
CREATE TABLE sandbox_tokens (
    hash       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('boot', 'sbx', 'egr')),
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id),
    session_id TEXT,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX sandbox_tokens_sandbox ON sandbox_tokens (sandbox_id);

-- Images committed from sandboxes: a profile's prepared snapshot, or a finished session's files.
CREATE TABLE snapshots (
    id              TEXT PRIMARY KEY,
    image           TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('profile', 'session')),
    profile_id      TEXT NOT NULL REFERENCES profiles (id),
    profile_version BIGINT NOT NULL,
    -- Hash of the base image and setup steps it was built from; a changed setup makes it stale.
    setup_hash      TEXT NOT NULL,
    session_id      TEXT REFERENCES sessions (id),
    size_bytes      BIGINT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX snapshots_profile ON snapshots (profile_id, kind, created_at);
