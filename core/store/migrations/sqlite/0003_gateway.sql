-- The gateway: its certificate authority and model usage (sqlite).
-- Keep in step with ../postgres/0003_gateway.sql.

-- The deployment's CA for TLS interception: one row, made on the gateway's first start. The
-- private key is sealed under the master key like a credential.
CREATE TABLE gateway_ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    key_id     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Tokens a model API reported for one response, metered by the gateway.
CREATE TABLE model_usage (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id    TEXT REFERENCES sessions (id),
    human_id      TEXT REFERENCES humans (id),
    sandbox_id    TEXT NOT NULL,
    host          TEXT NOT NULL,
    model         TEXT,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    at            BIGINT NOT NULL
);
CREATE INDEX model_usage_session ON model_usage (session_id);
CREATE INDEX model_usage_human ON model_usage (human_id, at);
