-- 0013: reservations that stay O(log n) at any rate, and many of them in one transaction.
--
-- Rolling windows no longer count rows. Every reservation of an agent gets the next ordinal
-- `ord` (under the agent's advisory lock) and a time `at` that never goes back for that agent,
-- so the actions in (t, now] are `last ord - first ord after t + 1`, found by two index probes,
-- minus the released ones (provider failures: rows are marked, not deleted, so ordinals keep
-- their meaning). Before, the per-minute check counted every row of the last minute: linear in
-- the agent's rate, and taken under its lock.
ALTER TABLE recent_actions ADD COLUMN ord bigint, ADD COLUMN released boolean NOT NULL DEFAULT false;
UPDATE recent_actions r SET ord = n.ord
  FROM (SELECT reservation_id, row_number() OVER (PARTITION BY agent_id ORDER BY at, reservation_id) AS ord
          FROM recent_actions) n
 WHERE n.reservation_id = r.reservation_id;
ALTER TABLE recent_actions ALTER COLUMN ord SET NOT NULL;
DROP INDEX recent_actions_agent;
CREATE INDEX recent_actions_agent_at ON recent_actions (agent_id, at, ord) WHERE NOT released;
CREATE UNIQUE INDEX recent_actions_agent_ord ON recent_actions (agent_id, ord);
CREATE INDEX recent_actions_released ON recent_actions (agent_id, ord) WHERE released;
-- The pruning job deletes by age alone.
CREATE INDEX recent_actions_at ON recent_actions (at);

DROP FUNCTION reserve_action(uuid, text, text, timestamptz, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint, text, bigint);
DROP FUNCTION release_action(uuid, text, text, timestamptz, bigint, text);
DROP FUNCTION settle_action_cost(text, text, timestamptz, bigint);

-- Actions of `p_agent` counted in the rolling window after `p_since`, and the oldest of them.
CREATE FUNCTION window_actions(p_agent text, p_since timestamptz, p_last_ord bigint,
                               OUT counted bigint, OUT oldest timestamptz)
    LANGUAGE plpgsql STABLE AS
$$
DECLARE
    v_first bigint;
BEGIN
    SELECT r.ord, r.at INTO v_first, oldest FROM recent_actions r
     WHERE r.agent_id = p_agent AND NOT r.released AND r.at > p_since
     ORDER BY r.at, r.ord LIMIT 1;
    IF v_first IS NULL THEN
        counted := 0;
        RETURN;
    END IF;
    counted := p_last_ord - v_first + 1
        - (SELECT count(*) FROM recent_actions r WHERE r.agent_id = p_agent AND r.released AND r.ord > v_first);
END;
$$;

-- One reservation; the caller holds the agent's advisory lock (and the org's), which
-- `reserve_actions` takes for its whole batch in one global order.
CREATE FUNCTION reserve_action(
    p_reservation uuid, p_agent text, p_org text, p_now timestamptz, p_cost bigint,
    p_per_minute bigint, p_per_hour bigint, p_per_day bigint,
    p_spend_day bigint, p_spend_month bigint, p_org_spend_day bigint, p_org_spend_month bigint,
    p_contact text, p_contact_max bigint,
    OUT limit_type text, OUT current_value bigint, OUT max_value bigint, OUT reset_at timestamptz)
    LANGUAGE plpgsql AS
$$
DECLARE
    v_day   date := (p_now AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', p_now AT TIME ZONE 'UTC')::date;
    v_last_ord bigint;
    v_last_at timestamptz;
    v_count bigint;
    v_oldest timestamptz;
    v_actions bigint;
    v_spend bigint;
BEGIN
    SELECT r.ord, r.at INTO v_last_ord, v_last_at FROM recent_actions r
     WHERE r.agent_id = p_agent ORDER BY r.ord DESC LIMIT 1;
    v_last_ord := COALESCE(v_last_ord, 0);

    IF p_per_minute IS NOT NULL THEN
        SELECT w.counted, w.oldest INTO v_count, v_oldest FROM window_actions(p_agent, p_now - interval '60 seconds', v_last_ord) w;
        IF v_count >= p_per_minute THEN
            limit_type := 'per-minute'; current_value := v_count; max_value := p_per_minute;
            reset_at := v_oldest + interval '60 seconds'; RETURN;
        END IF;
    END IF;
    IF p_per_hour IS NOT NULL THEN
        SELECT w.counted, w.oldest INTO v_count, v_oldest FROM window_actions(p_agent, p_now - interval '3600 seconds', v_last_ord) w;
        IF v_count >= p_per_hour THEN
            limit_type := 'per-hour'; current_value := v_count; max_value := p_per_hour;
            reset_at := v_oldest + interval '3600 seconds'; RETURN;
        END IF;
    END IF;

    SELECT COALESCE(max(u.actions), 0), COALESCE(max(u.spend), 0) INTO v_actions, v_spend FROM usage_counters u
     WHERE u.scope = 'agent' AND u.key = p_agent AND u.period = 'day' AND u.period_start = v_day;
    IF p_per_day IS NOT NULL AND v_actions >= p_per_day THEN
        limit_type := 'per-day'; current_value := v_actions; max_value := p_per_day;
        reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
    END IF;
    IF p_spend_day IS NOT NULL AND v_spend + p_cost > p_spend_day THEN
        limit_type := 'daily-spend'; current_value := v_spend; max_value := p_spend_day;
        reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
    END IF;
    IF p_spend_month IS NOT NULL THEN
        SELECT COALESCE(max(u.spend), 0) INTO v_spend FROM usage_counters u
         WHERE u.scope = 'agent' AND u.key = p_agent AND u.period = 'month' AND u.period_start = v_month;
        IF v_spend + p_cost > p_spend_month THEN
            limit_type := 'monthly-spend'; current_value := v_spend; max_value := p_spend_month;
            reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;
    IF p_org_spend_day IS NOT NULL THEN
        SELECT COALESCE(max(u.spend), 0) INTO v_spend FROM usage_counters u
         WHERE u.scope = 'org' AND u.key = p_org AND u.period = 'day' AND u.period_start = v_day;
        IF v_spend + p_cost > p_org_spend_day THEN
            limit_type := 'org_spend_day'; current_value := v_spend; max_value := p_org_spend_day;
            reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;
    IF p_org_spend_month IS NOT NULL THEN
        SELECT COALESCE(max(u.spend), 0) INTO v_spend FROM usage_counters u
         WHERE u.scope = 'org' AND u.key = p_org AND u.period = 'month' AND u.period_start = v_month;
        IF v_spend + p_cost > p_org_spend_month THEN
            limit_type := 'org_spend_month'; current_value := v_spend; max_value := p_org_spend_month;
            reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;
    IF p_contact IS NOT NULL AND p_contact_max IS NOT NULL THEN
        SELECT COALESCE(max(u.actions), 0) INTO v_actions FROM usage_counters u
         WHERE u.scope = 'contact' AND u.key = p_agent || '|' || p_contact AND u.period = 'day' AND u.period_start = v_day;
        IF v_actions >= p_contact_max THEN
            limit_type := 'contact-frequency'; current_value := v_actions; max_value := p_contact_max;
            reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;

    INSERT INTO recent_actions (reservation_id, agent_id, at, ord)
    VALUES (p_reservation, p_agent, GREATEST(p_now, v_last_at), v_last_ord + 1);
    IF p_contact IS NOT NULL THEN
        INSERT INTO usage_counters AS u (scope, key, period, period_start, actions, spend)
        VALUES ('contact', p_agent || '|' || p_contact, 'day', v_day, 1, 0)
        ON CONFLICT (scope, key, period, period_start) DO UPDATE SET actions = u.actions + 1;
    END IF;
    INSERT INTO usage_counters AS u (scope, key, period, period_start, actions, spend)
    VALUES ('agent', p_agent, 'day', v_day, 1, p_cost), ('agent', p_agent, 'month', v_month, 1, p_cost),
           ('org', p_org, 'day', v_day, 1, p_cost), ('org', p_org, 'month', v_month, 1, p_cost)
    ON CONFLICT (scope, key, period, period_start)
        DO UPDATE SET actions = u.actions + EXCLUDED.actions, spend = u.spend + EXCLUDED.spend;
    -- limit_type NULL: reserved.
END;
$$;

-- A batch of reservations, decided in array order as if one after the other, in one
-- transaction: one commit (one WAL flush) for the batch. Every org and agent lock the batch
-- needs is taken first, orgs before agents, each group in key order — the one order every
-- writer of these rows follows, so batches from several instances never deadlock.
CREATE FUNCTION reserve_actions(p_requests jsonb)
    RETURNS TABLE (r_ord bigint, r_limit_type text, r_current bigint, r_max bigint, r_reset_at timestamptz)
    LANGUAGE plpgsql AS
$$
DECLARE
    l record;
    q record;
BEGIN
    FOR l IN
        SELECT DISTINCT k.tier, k.lock_key FROM (
            SELECT 0 AS tier, hashtext('commguard.limits.org.' || (e->>'org')) AS lock_key
              FROM jsonb_array_elements(p_requests) e
            UNION ALL
            SELECT 1, hashtext('commguard.limits.agent.' || (e->>'agent')) FROM jsonb_array_elements(p_requests) e
        ) k ORDER BY k.tier, k.lock_key
    LOOP
        PERFORM pg_advisory_xact_lock(l.lock_key);
    END LOOP;
    FOR q IN SELECT t.e, t.o FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS t(e, o) ORDER BY t.o LOOP
        SELECT a.limit_type, a.current_value, a.max_value, a.reset_at INTO r_limit_type, r_current, r_max, r_reset_at
          FROM reserve_action((q.e->>'id')::uuid, q.e->>'agent', q.e->>'org', (q.e->>'now')::timestamptz,
                              (q.e->>'cost')::bigint, (q.e->>'perMinute')::bigint, (q.e->>'perHour')::bigint,
                              (q.e->>'perDay')::bigint, (q.e->>'spendDay')::bigint, (q.e->>'spendMonth')::bigint,
                              (q.e->>'orgSpendDay')::bigint, (q.e->>'orgSpendMonth')::bigint,
                              q.e->>'contact', (q.e->>'contactMax')::bigint) a;
        r_ord := q.o;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Undoes a reservation (the provider failed): the slot, its estimated cost and its contact
-- count come back. Takes the agent's lock first, like every writer of its counters.
CREATE FUNCTION release_action(p_reservation uuid, p_agent text, p_org text, p_at timestamptz, p_cost bigint, p_contact text)
    RETURNS void LANGUAGE plpgsql AS
$$
DECLARE
    v_day   date := (p_at AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', p_at AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('commguard.limits.agent.' || p_agent));
    UPDATE recent_actions SET released = true WHERE reservation_id = p_reservation AND NOT released;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE usage_counters SET actions = actions - 1, spend = spend - p_cost
     WHERE (scope, key, period, period_start) IN
           (('agent', p_agent, 'day', v_day), ('agent', p_agent, 'month', v_month),
            ('org', p_org, 'day', v_day), ('org', p_org, 'month', v_month),
            ('contact', p_agent || '|' || COALESCE(p_contact, ''), 'day', v_day));
END;
$$;

-- Adds `p_delta` (a settled estimate, or a call's final price) to the agent's and its org's
-- spend. Takes the agent's lock first, like every writer of its counters.
CREATE FUNCTION settle_action_cost(p_agent text, p_org text, p_at timestamptz, p_delta bigint)
    RETURNS void LANGUAGE plpgsql AS
$$
BEGIN
    IF p_delta = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('commguard.limits.agent.' || p_agent));
    UPDATE usage_counters SET spend = spend + p_delta
     WHERE (scope, key, period, period_start) IN
           (('agent', p_agent, 'day', (p_at AT TIME ZONE 'UTC')::date),
            ('agent', p_agent, 'month', date_trunc('month', p_at AT TIME ZONE 'UTC')::date),
            ('org', p_org, 'day', (p_at AT TIME ZONE 'UTC')::date),
            ('org', p_org, 'month', date_trunc('month', p_at AT TIME ZONE 'UTC')::date));
END;
$$;
