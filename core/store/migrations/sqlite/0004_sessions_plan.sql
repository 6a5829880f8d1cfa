-- Session plans, branches and pull requests (sqlite). Keep in step with ../postgres/0004_sessions_plan.sql.

-- The plan a session runs under (JSON): the routes, environment, limits, agent and git
-- settings computed from its profile version, repository and requester. The gateway enforces
-- exactly these routes; the admin page shows them.
ALTER TABLE sessions ADD COLUMN plan TEXT;
-- The branch the session pushes to, and the pull request it opened or pushed to.
ALTER TABLE sessions ADD COLUMN branch TEXT;
ALTER TABLE sessions ADD COLUMN pull_request_url TEXT;
CREATE INDEX sessions_requester_state ON sessions (requester_id, state);
