-- 0001: the event store.
--
-- `events` keeps postgres-es's columns (so its reads work unchanged) and adds what an auditor needs:
-- a global `position`, the event id, when it happened, its organization, and the per-aggregate
-- hash chain. Rows are only ever inserted: the trigger below refuses UPDATE and DELETE.
--
-- `position` = (transaction id << 12) | index of the event within its transaction. Readers only
-- read below the horizon (pg_snapshot_xmin << 12): every transaction with a smaller id has ended,
-- so once a reader has seen position p, no event at or below p can appear later. A plain sequence
-- cannot promise that, because sequence values are taken before commit and commits reorder them.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 1) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    position       bigint                       NOT NULL,
    event_id       uuid                         NOT NULL,
    occurred_at    timestamptz                  NOT NULL,
    org_id         text,
    prev_hash      text                         NOT NULL,
    hash           text                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE UNIQUE INDEX events_position ON events (position);
CREATE UNIQUE INDEX events_event_id ON events (event_id);
CREATE INDEX events_org_position ON events (org_id, position);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'the event store is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- The head of every chain, written in the append transaction: it exposes a truncated tail.
CREATE TABLE chain_heads
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    last_hash      text   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- postgres-es snapshots (aggregate state every N events), so long streams load fast.
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- The highest position each projection has applied, written in the same transaction as its rows.
CREATE TABLE projection_checkpoints
(
    projection text   PRIMARY KEY,
    position   bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The smallest position no reader may pass yet: every transaction below it has ended.
CREATE FUNCTION event_horizon() RETURNS bigint LANGUAGE sql STABLE AS
$$ SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint) << 12 $$;
