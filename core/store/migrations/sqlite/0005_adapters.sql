-- Threads, inbound webhooks, link codes and GitHub installations (sqlite).
-- Keep in step with ../postgres/0005_adapters.sql.

-- The conversation a session belongs to (`github:OWNER/NAME#12`, a Slack thread, a Discord
-- thread): later requests there continue the session. `notify` names the surface whose
-- thread gets the session's status (NULL: nobody is told, as for the CLI).
ALTER TABLE sessions ADD COLUMN thread_key TEXT;
ALTER TABLE sessions ADD COLUMN notify TEXT;
CREATE INDEX sessions_thread ON sessions (thread_key, created_at);

-- Every verified webhook delivery, stored before it is answered so that none is lost, and
-- unique per provider so that a replayed or retried delivery is recognised.
CREATE TABLE inbound (
    id           TEXT PRIMARY KEY,
    provider     TEXT NOT NULL,
    delivery_id  TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    processed_at BIGINT,
    error        TEXT,
    UNIQUE (provider, delivery_id)
);
CREATE INDEX inbound_pending ON inbound (processed_at, received_at);

-- One-time codes that link a chat account to a human once the person proves who they are
-- (signed in to the admin page, or by commenting the code from their GitHub account). Only
-- the code's hash is kept.
CREATE TABLE link_codes (
    code_hash   TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    external_id TEXT NOT NULL,
    handle      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_at  BIGINT NOT NULL
);

-- Where the GitHub App is installed and which repositories it can reach.
CREATE TABLE github_installations (
    id         BIGINT PRIMARY KEY,
    account    TEXT NOT NULL,
    repos      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
