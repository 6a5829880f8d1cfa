-- One conversation, one session: two requests in the same thread at once used to both find
-- no session and both create one. People's sessions (not triggers', which may report into
-- a thread that already has one) are now unique per thread key. Duplicates made before this
-- keep their records; only the newest stays the thread's.
UPDATE sessions SET thread_key = NULL
WHERE thread_key IS NOT NULL AND trigger_id IS NULL
  AND id NOT IN (
    SELECT MAX(id) FROM sessions
    WHERE thread_key IS NOT NULL AND trigger_id IS NULL
    GROUP BY thread_key
  );
CREATE UNIQUE INDEX sessions_one_per_thread ON sessions (thread_key)
  WHERE thread_key IS NOT NULL AND trigger_id IS NULL;
