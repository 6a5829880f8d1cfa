-- A session's latest event of a kind (its latest prompt, its current turn) without reading
-- its output.
CREATE INDEX session_events_kind ON session_events (session_id, kind, seq);

-- Output stored per session, for limits.session_output_mb.
ALTER TABLE sessions ADD COLUMN output_bytes BIGINT NOT NULL DEFAULT 0;
