-- 0004: who exists and who may call. The directory projections (orgs, agents, tokens) are fed by
-- the projection runner from organization and agent events and can be rebuilt from zero; the
-- last two tables are operational state that is not an event (CONTRACT P2: successful reads are
-- not recorded), shared by every instance through Postgres.

CREATE TABLE orgs
(
    org_id              text PRIMARY KEY,
    name                text        NOT NULL,
    slug                text        NOT NULL,
    mode                text        NOT NULL,
    a2p_registered      boolean     NOT NULL,
    settings            jsonb       NOT NULL DEFAULT '{}',
    max_agents          integer     NOT NULL,
    max_spend_per_day   bigint,
    max_spend_per_month bigint,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
-- Slugs are unique: creation holds an advisory lock on the slug and checks this table.
CREATE UNIQUE INDEX orgs_slug ON orgs (slug);

CREATE TABLE agents
(
    agent_id         text PRIMARY KEY,
    org_id           text        NOT NULL,
    display_name     text        NOT NULL,
    agent_gender     text        NOT NULL,
    country          text        NOT NULL,
    status           text        NOT NULL,
    capabilities     jsonb       NOT NULL,
    channels         jsonb       NOT NULL,
    blocked_channels jsonb       NOT NULL DEFAULT '[]',
    mode             text        NOT NULL,
    provisioned_at   timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX agents_org ON agents (org_id, status);

-- Bearer tokens by SHA-256 hash. `kind` is agent or org; agent tokens carry their agent's org.
CREATE TABLE tokens
(
    token_hash text PRIMARY KEY,
    token_id   uuid        NOT NULL UNIQUE,
    kind       text        NOT NULL,
    agent_id   text,
    org_id     text        NOT NULL,
    label      text,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX tokens_agent ON tokens (agent_id) WHERE revoked_at IS NULL;

-- lastUsedAt per token, written at most once a minute per token by each instance.
CREATE TABLE token_last_used
(
    token_id     uuid PRIMARY KEY,
    last_used_at timestamptz NOT NULL
);

-- Brute-force counting per IP key (IPv6 by /64), shared by every instance (CONTRACT §13.3).
CREATE TABLE auth_failures
(
    ip_key       text PRIMARY KEY,
    failures     integer     NOT NULL,
    window_start timestamptz NOT NULL,
    locked_until timestamptz
);
