-- 0021: the alerts projection (CONTRACT §12 /admin/api/alerts, §14): one row per AlertRaised.
-- `occurrences` counts the alerts of the same rule and subject up to and including this one.
-- `org_id` is the org of the agent an alert is about; IP alerts have none (platform-wide).
CREATE TABLE alerts
(
    position     bigint PRIMARY KEY,
    alert_id     text        NOT NULL,
    rule         text        NOT NULL,
    severity     text        NOT NULL,
    title        text        NOT NULL,
    message      text        NOT NULL,
    subject_kind text        NOT NULL,
    subject_id   text        NOT NULL,
    org_id       text,
    raised_at    timestamptz NOT NULL,
    occurrences  bigint      NOT NULL
);
CREATE INDEX alerts_org_position ON alerts (org_id, position);
CREATE INDEX alerts_subject ON alerts (rule, subject_kind, subject_id);

-- The anomaly projection (CONTRACT §14): event counts per counter, subject and fixed window,
-- fed by outbound attempts (per agent, 5 min), AuthFailed (per IP, 5 min) and AgentTokenIssued
-- (per agent, 1 h). The detector reads only the current and previous windows.
CREATE TABLE anomaly_windows
(
    counter      text        NOT NULL,
    subject_kind text        NOT NULL,
    subject_id   text        NOT NULL,
    window_start timestamptz NOT NULL,
    org_id       text,
    count        bigint      NOT NULL,
    PRIMARY KEY (counter, window_start, subject_kind, subject_id)
);
