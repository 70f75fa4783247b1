-- 0008: the usage projection: actions and provider cost (micro-dollars) per agent, channel and
-- UTC hour, fed by MessageSent (and, with calls, CallPlaced). Dashboards and billing sum hours.
CREATE TABLE usage_hourly
(
    agent_id text        NOT NULL,
    org_id   text        NOT NULL,
    hour     timestamptz NOT NULL,
    channel  text        NOT NULL,
    actions  bigint      NOT NULL,
    cost     bigint      NOT NULL,
    PRIMARY KEY (agent_id, hour, channel)
);
CREATE INDEX usage_hourly_org ON usage_hourly (org_id, hour);
