-- 0022: anomaly windows know where they end, so the detector reads the current ones
-- (`window_end > now`) and old ones are pruned (`window_end` long past) by one indexed
-- statement each; the projection now also counts spend per agent and UTC day (micro-dollars in
-- `count`) and each lockout (from its start to `lockedUntil`). And the `sessions` projection
-- (CONTRACT §15 `replay --projection sessions`): one row per MCP session, opened and closed.
ALTER TABLE anomaly_windows ADD COLUMN window_end timestamptz;
UPDATE anomaly_windows SET window_end = window_start + CASE
    WHEN counter = 'token_issued' OR counter = 'rate_limit:per-hour' THEN interval '1 hour'
    WHEN counter = 'rate_limit:per-minute' THEN interval '1 minute'
    WHEN counter IN ('rate_limit:monthly-spend', 'rate_limit:org_spend_month') THEN interval '1 month'
    WHEN counter LIKE 'rate_limit:%' THEN interval '1 day'
    ELSE interval '5 minutes' END;
ALTER TABLE anomaly_windows ALTER COLUMN window_end SET NOT NULL;
CREATE INDEX anomaly_windows_end ON anomaly_windows (window_end);

CREATE TABLE mcp_sessions
(
    session_id   text PRIMARY KEY,
    principal    text        NOT NULL, -- `<kind>:<id>`, the stream the session's events are on
    org_id       text,
    transport    text        NOT NULL,
    opened_at    timestamptz NOT NULL,
    closed_at    timestamptz,
    close_reason text
);
CREATE INDEX mcp_sessions_open ON mcp_sessions (principal) WHERE closed_at IS NULL;
