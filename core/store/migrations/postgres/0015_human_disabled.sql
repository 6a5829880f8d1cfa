-- A disabled human keeps their history and accounts but can start nothing and sign in
-- nowhere; an admin enables them again.
ALTER TABLE humans ADD COLUMN disabled_at BIGINT;
