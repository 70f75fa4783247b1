-- 0012: communication law and webhooks (CONTRACT §8, §10).

-- The consent projection: one row per (org, contact, agent, channel), fed by the contact
-- aggregate. `sealed` holds the grant's personal fields exactly as stored in the event
-- (`source`, `notes`), opened with the grant's event id when read.
CREATE TABLE consents
(
    org_id         text        NOT NULL,
    subject_ref    text        NOT NULL,
    agent_id       text        NOT NULL,
    channel        text        NOT NULL,
    consent_id     uuid        NOT NULL,
    consent_type   text        NOT NULL,
    status         text        NOT NULL,
    granted_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    grant_event_id uuid        NOT NULL,
    sealed         jsonb       NOT NULL,
    PRIMARY KEY (org_id, subject_ref, agent_id, channel)
);

-- The DNC projection: one row per entry. `sealed` holds `address` as stored in DncAdded.
CREATE TABLE dnc_entries
(
    entry_id     uuid PRIMARY KEY,
    org_id       text        NOT NULL,
    subject_ref  text        NOT NULL,
    address_type text        NOT NULL,
    source       text        NOT NULL,
    reason       text,
    added_by     text        NOT NULL,
    added_at     timestamptz NOT NULL,
    event_id     uuid        NOT NULL,
    position     bigint      NOT NULL,
    sealed       jsonb       NOT NULL
);
CREATE INDEX dnc_entries_subject ON dnc_entries (org_id, subject_ref);
CREATE INDEX dnc_entries_listing ON dnc_entries (org_id, position);

-- The calls projection: placed calls by provider id, for status callbacks.
CREATE TABLE calls
(
    call_id     uuid PRIMARY KEY,
    agent_id    text        NOT NULL,
    org_id      text        NOT NULL,
    external_id text        NOT NULL,
    kind        text        NOT NULL,
    provider    text        NOT NULL,
    placed_at   timestamptz NOT NULL,
    status      text        NOT NULL,
    cost        bigint      NOT NULL
);
CREATE INDEX calls_external ON calls (agent_id, external_id);

-- Webhook replay protection (§8.4): a nonce is claimed atomically by the first request that
-- uses it; a reuse within the window is a replay on every instance. Operational state: rows
-- past the window are pruned.
CREATE TABLE webhook_nonces
(
    nonce   text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
CREATE INDEX webhook_nonces_seen ON webhook_nonces (seen_at);
