-- Channel defaults for chat requests (sqlite). Keep in step with ../postgres/0006_channels.sql.

-- What a Slack or Discord channel works on when a request names no repository or profile
-- (`/airlock config repo=OWNER/NAME profile=NAME`, admins only).
CREATE TABLE channel_settings (
    surface    TEXT NOT NULL,
    workspace  TEXT NOT NULL,
    channel    TEXT NOT NULL,
    repo       TEXT,
    profile    TEXT,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (surface, workspace, channel)
);
