-- 0031: the indexes of projection tables under the names their migrations gave them again.
--
-- Until this release, `commguard replay` swapped its shadow tables in under the live tables' names
-- but left their indexes and keys named after the shadows (`audit_items__shadow_org_id_position_idx`,
-- `…_pkey1` after a second replay): `CREATE TABLE … (LIKE … INCLUDING ALL)` names them so. A later
-- migration that names one, as 0027 dropped `audit_items_agent`, would then fail. Replay now keeps
-- the names (src/store/runner.rs, `index_renames`); this gives a database that was replayed before
-- it its names back. Each index is found by its definition (its name and table aside), so a database
-- that was never replayed is left as it is.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT i.relname AS current, c.canonical
          FROM (VALUES
        ('agent_limits', 'agent_limits_pkey', 'CREATE UNIQUE INDEX USING btree (agent_id)'),
        ('agents', 'agents_org', 'CREATE INDEX USING btree (org_id, status)'),
        ('agents', 'agents_pkey', 'CREATE UNIQUE INDEX USING btree (agent_id)'),
        ('alerts', 'alerts_org_position', 'CREATE INDEX USING btree (org_id, "position")'),
        ('alerts', 'alerts_pkey', 'CREATE UNIQUE INDEX USING btree ("position")'),
        ('alerts', 'alerts_subject', 'CREATE INDEX USING btree (rule, subject_kind, subject_id)'),
        ('anomaly_windows', 'anomaly_windows_end', 'CREATE INDEX USING btree (window_end)'),
        ('anomaly_windows', 'anomaly_windows_pkey', 'CREATE UNIQUE INDEX USING btree (counter, window_start, subject_kind, subject_id)'),
        ('audit_items', 'audit_items_agent', 'CREATE INDEX USING btree (agent_id, "position") WHERE (agent_id IS NOT NULL)'),
        ('audit_items', 'audit_items_org', 'CREATE INDEX USING btree (org_id, "position")'),
        ('audit_items', 'audit_items_pkey', 'CREATE UNIQUE INDEX USING btree ("position")'),
        ('audit_items', 'audit_items_subject', 'CREATE INDEX USING btree (subject_ref, "position") WHERE (subject_ref IS NOT NULL)'),
        ('audit_stream_heads', 'audit_stream_heads_pkey', 'CREATE UNIQUE INDEX USING btree (aggregate_type, aggregate_id)'),
        ('calls', 'calls_external', 'CREATE INDEX USING btree (agent_id, external_id)'),
        ('calls', 'calls_pkey', 'CREATE UNIQUE INDEX USING btree (call_id)'),
        ('consents', 'consents_pkey', 'CREATE UNIQUE INDEX USING btree (org_id, subject_ref, agent_id, channel)'),
        ('consents', 'consents_subject_ref', 'CREATE INDEX USING btree (subject_ref)'),
        ('dnc_entries', 'dnc_entries_listing', 'CREATE INDEX USING btree (org_id, "position")'),
        ('dnc_entries', 'dnc_entries_pkey', 'CREATE UNIQUE INDEX USING btree (entry_id)'),
        ('dnc_entries', 'dnc_entries_subject', 'CREATE INDEX USING btree (org_id, subject_ref)'),
        ('dnc_entries', 'dnc_entries_subject_ref', 'CREATE INDEX USING btree (subject_ref)'),
        ('mcp_sessions', 'mcp_sessions_open', 'CREATE INDEX USING btree (principal) WHERE (closed_at IS NULL)'),
        ('mcp_sessions', 'mcp_sessions_pkey', 'CREATE UNIQUE INDEX USING btree (session_id)'),
        ('orgs', 'orgs_pkey', 'CREATE UNIQUE INDEX USING btree (org_id)'),
        ('orgs', 'orgs_slug', 'CREATE UNIQUE INDEX USING btree (slug)'),
        ('tokens', 'tokens_agent', 'CREATE INDEX USING btree (agent_id) WHERE (revoked_at IS NULL)'),
        ('tokens', 'tokens_pkey', 'CREATE UNIQUE INDEX USING btree (token_hash)'),
        ('tokens', 'tokens_token_id_key', 'CREATE UNIQUE INDEX USING btree (token_id)'),
        ('usage_hourly', 'usage_hourly_org', 'CREATE INDEX USING btree (org_id, hour)'),
        ('usage_hourly', 'usage_hourly_pkey', 'CREATE UNIQUE INDEX USING btree (agent_id, hour, channel)')
               ) AS c(tbl, canonical, definition)
          JOIN pg_index x ON x.indrelid = to_regclass(c.tbl)
          JOIN pg_class i ON i.oid = x.indexrelid
         WHERE regexp_replace(pg_get_indexdef(x.indexrelid), '^(CREATE (UNIQUE )?INDEX) \S+ ON \S+', '\1') = c.definition
           AND i.relname <> c.canonical
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', r.current, r.canonical);
    END LOOP;
END;
$$;
