-- Indexes for the queries that run on every page view, list, broker tick and reconcile
-- (core/tests/storage.rs `hot_queries_use_an_index` checks each plan on both engines).
CREATE INDEX sessions_created ON sessions (created_at, id);
CREATE INDEX audit_log_session ON audit_log (session_id, seq);
CREATE INDEX snapshots_session ON snapshots (session_id, kind, created_at);
CREATE INDEX deliveries_session ON deliveries (session_id, id);
