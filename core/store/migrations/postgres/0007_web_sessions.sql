-- Admin page sign-ins (postgres). Keep in step with ../sqlite/0007_web_sessions.sql.

-- A signed-in browser: only the hash of its cookie is kept, with the CSRF token its forms
-- must carry.
CREATE TABLE web_sessions (
    token_hash   TEXT PRIMARY KEY,
    human_id     TEXT NOT NULL REFERENCES humans (id) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX web_sessions_human ON web_sessions (human_id);
