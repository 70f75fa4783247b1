-- 0019: point-in-time views (CONTRACT §12 `as_of`). `GET /admin/api/limits?as_of=` folds an
-- agent's settings events and its org's, and must not walk the agent's whole stream (every
-- message and call it ever made) to find them. This partial index holds only the events that
-- set tiers, overrides and caps: rare, so an append pays nothing for it beyond the predicate
-- test. A query whose `event_type IN (...)` list is written into its text (not bound) and is a
-- subset of this one can use it: src/directory/limits.rs (AGENT_SETTINGS, ORG_SETTINGS) names
-- the same types. Contact streams need no index: every event of one is a consent or DNC event.
CREATE INDEX events_settings ON events (aggregate_type, aggregate_id, sequence)
    WHERE event_type IN ('AgentProvisioned', 'LimitsChanged', 'BillingConfigChanged',
                         'OrganizationCreated', 'OrgSettingsChanged');
