-- 0027: the audit view's agent index holds only the rows about an agent, as the subject index
-- (0018) holds only the rows about a subject. `/audit?agentId=` filters by `agent_id = $n`, which
-- implies `agent_id IS NOT NULL`, so every query that used the full index uses this one. Rows
-- about no agent (organization, contact, subject and system streams without an agentId) cost
-- no index entry: btree inserts into audit_items' indexes were three quarters of the COPY that
-- writes a catch-up batch (docs/performance.md, event-store).
DROP INDEX audit_items_agent;
CREATE INDEX audit_items_agent ON audit_items (agent_id, position) WHERE agent_id IS NOT NULL;
