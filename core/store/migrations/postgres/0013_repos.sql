-- Repositories registered with `airlock repo add`: a local git repository the server serves
-- to sandboxes over smart HTTP (`location` is its absolute path), or a git remote that is
-- not GitHub (`location` is its https URL), used in push-only mode.
CREATE TABLE repos (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    location TEXT NOT NULL,
    credential TEXT,
    username TEXT,
    upstream TEXT,
    created_at BIGINT NOT NULL
);
