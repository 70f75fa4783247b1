-- 0003: the audit projection (CONTRACT §12 /admin/api/audit), fed by the projection runner.
CREATE TABLE audit_items
(
    position       bigint PRIMARY KEY,
    occurred_at    timestamptz NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    event_type     text        NOT NULL,
    outcome        text        NOT NULL,
    actor_kind     text,
    actor_id       text,
    agent_id       text,
    org_id         text,
    refused_by     text,
    code           text,
    rule           text
);
-- Exactly once is the position key; stream order is audit_stream_heads. No third unique index:
-- each index costs catch-up speed.
CREATE INDEX audit_items_org ON audit_items (org_id, position);
CREATE INDEX audit_items_agent ON audit_items (agent_id, position);

-- The last sequence the audit view applied per stream: applying out of order is a bug and fails.
CREATE TABLE audit_stream_heads
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
