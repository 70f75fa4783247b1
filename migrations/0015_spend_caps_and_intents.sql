-- 0015: spend caps as the contract words them, and outbound intents.
--
-- 1. CONTRACT §9.1: "a check refuses when current >= max *before* the action". The spend checks
--    of 0013 refused when current + this action's estimate exceeded the cap, one action too
--    early (a 0.005 daily cap refused the first 0.0079 SMS). Every limit now compares the same
--    way; the reservation still adds its estimate atomically, so racing sends overshoot a spend
--    cap by at most one action's cost (they are decided one after another under the locks).
--
-- 2. Outbound intents. A send is recorded durably *before* its provider call: the reservation
--    transaction also stores an intent (the event to record if nobody completes it, sealed under
--    the recipient's subject key) owned by the reserving instance. Completing the action (its
--    event appended) deletes the intent; an intent whose owner stopped heartbeating is
--    reconciled by any instance (recorded as sent-unconfirmed, or released when the store shows
--    the action failed). So no acknowledged send goes unrecorded, and no crash leaks a slot.

CREATE TABLE outbound_intents (
    id          uuid PRIMARY KEY,          -- = the reservation, = messageId / callId
    agent_id    text NOT NULL,
    org_id      text NOT NULL,
    owner       uuid NOT NULL,             -- the instance that reserved it
    at          timestamptz NOT NULL,      -- the reservation's time (its counters' day and month)
    cost        bigint NOT NULL,           -- the reservation's estimated cost, micro-dollars
    contact     text,                      -- the voice recipient's blind index (contact frequency)
    intent      jsonb NOT NULL,            -- sealed envelope of {event, context}
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbound_intents_owner ON outbound_intents (owner);

-- Live server instances. An instance heartbeats every few seconds; one that stopped for longer
-- than the lease is dead, and its intents are reconciled by the others (or by its successor).
CREATE TABLE service_instances (
    id            uuid PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- One reservation; the caller holds the agent's advisory lock (and the org's), which
-- `reserve_actions` takes for its whole batch in one global order.
CREATE OR REPLACE FUNCTION reserve_action(
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
    IF p_spend_day IS NOT NULL AND v_spend >= p_spend_day THEN
        limit_type := 'daily-spend'; current_value := v_spend; max_value := p_spend_day;
        reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
    END IF;
    IF p_spend_month IS NOT NULL THEN
        SELECT COALESCE(max(u.spend), 0) INTO v_spend FROM usage_counters u
         WHERE u.scope = 'agent' AND u.key = p_agent AND u.period = 'month' AND u.period_start = v_month;
        IF v_spend >= p_spend_month THEN
            limit_type := 'monthly-spend'; current_value := v_spend; max_value := p_spend_month;
            reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;
    IF p_org_spend_day IS NOT NULL THEN
        SELECT COALESCE(max(u.spend), 0) INTO v_spend FROM usage_counters u
         WHERE u.scope = 'org' AND u.key = p_org AND u.period = 'day' AND u.period_start = v_day;
        IF v_spend >= p_org_spend_day THEN
            limit_type := 'org_spend_day'; current_value := v_spend; max_value := p_org_spend_day;
            reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;
    IF p_org_spend_month IS NOT NULL THEN
        SELECT COALESCE(max(u.spend), 0) INTO v_spend FROM usage_counters u
         WHERE u.scope = 'org' AND u.key = p_org AND u.period = 'month' AND u.period_start = v_month;
        IF v_spend >= p_org_spend_month THEN
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

-- A batch of reservations (each reserved one with its intent, if it has one), decided in array order as if one after the other, in one
-- transaction: one commit (one WAL flush) for the batch. Every org and agent lock the batch
-- needs is taken first, orgs before agents, each group in key order — the one order every
-- writer of these rows follows, so batches from several instances never deadlock.
CREATE OR REPLACE FUNCTION reserve_actions(p_requests jsonb)
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
        IF r_limit_type IS NULL AND q.e ? 'intent' THEN
            INSERT INTO outbound_intents (id, agent_id, org_id, owner, at, cost, contact, intent)
            VALUES ((q.e->>'id')::uuid, q.e->>'agent', q.e->>'org', (q.e->>'owner')::uuid,
                    (q.e->>'now')::timestamptz, (q.e->>'cost')::bigint, q.e->>'contact', q.e->'intent');
        END IF;
        r_ord := q.o;
        RETURN NEXT;
    END LOOP;
END;
$$;


-- Completes sent actions: deletes their intents and moves each reservation's cost by its delta
-- (actual minus estimated). Locks are taken only for non-zero deltas, orgs before agents, each
-- in key order: the order `reserve_actions` follows, so the two never deadlock.
CREATE FUNCTION complete_intents(p_ids uuid[], p_deltas bigint[]) RETURNS void
    LANGUAGE plpgsql AS
$$
DECLARE
    l record;
    r record;
BEGIN
    FOR l IN
        SELECT DISTINCT k.tier, k.lock_key FROM (
            SELECT 0 AS tier, hashtext('commguard.limits.org.' || i.org_id) AS lock_key
              FROM outbound_intents i JOIN UNNEST(p_ids, p_deltas) AS d(id, delta) ON d.id = i.id WHERE d.delta <> 0
            UNION ALL
            SELECT 1, hashtext('commguard.limits.agent.' || i.agent_id)
              FROM outbound_intents i JOIN UNNEST(p_ids, p_deltas) AS d(id, delta) ON d.id = i.id WHERE d.delta <> 0
        ) k ORDER BY k.tier, k.lock_key
    LOOP
        PERFORM pg_advisory_xact_lock(l.lock_key);
    END LOOP;
    FOR r IN
        DELETE FROM outbound_intents i USING UNNEST(p_ids, p_deltas) AS d(id, delta)
         WHERE i.id = d.id
        RETURNING i.agent_id, i.org_id, i.at, d.delta
    LOOP
        IF r.delta <> 0 THEN
            UPDATE usage_counters SET spend = spend + r.delta
             WHERE (scope, key, period, period_start) IN
                   (('agent', r.agent_id, 'day', (r.at AT TIME ZONE 'UTC')::date),
                    ('agent', r.agent_id, 'month', date_trunc('month', r.at AT TIME ZONE 'UTC')::date),
                    ('org', r.org_id, 'day', (r.at AT TIME ZONE 'UTC')::date),
                    ('org', r.org_id, 'month', date_trunc('month', r.at AT TIME ZONE 'UTC')::date));
        END IF;
    END LOOP;
END;
$$;

-- A failed action: its reservation is released (slot, estimated cost, contact count) and its
-- intent deleted, together. Nothing happens for an intent already settled.
CREATE FUNCTION release_intent(p_id uuid) RETURNS void
    LANGUAGE plpgsql AS
$$
DECLARE
    i record;
BEGIN
    DELETE FROM outbound_intents WHERE id = p_id RETURNING * INTO i;
    IF FOUND THEN
        PERFORM release_action(i.id, i.agent_id, i.org_id, i.at, i.cost, i.contact);
    END IF;
END;
$$;
