-- 0007: the limits projection: each agent's tier, limit overrides and markup, fed by
-- LimitsChanged and BillingConfigChanged. Agents without a row are on the starter tier.
CREATE TABLE agent_limits
(
    agent_id       text PRIMARY KEY,
    tier           text        NOT NULL DEFAULT 'starter',
    overrides      jsonb       NOT NULL DEFAULT '{}',
    markup_percent double precision,
    updated_at     timestamptz NOT NULL
);
