-- 0041: a batch of one request is decided in straight line.
--
-- 0040 took a lone request around the machinery of runs inside the batch loop; measured in place
-- (BENCH_PG_STATS=sequential, alternating with the build before it) its `reserve_actions` time per
-- lone send fell by 20 to 60 µs, against 67 µs for a straight-line function of its own in pgbench
-- (the function alone, one request: 0.348 -> 0.281 ms per call, six alternations, synchronous
-- commit off): the loop, its record query and the branches that kept batches apart still ran.
-- Here `reserve_actions` is 0039's (batches of several are unchanged) with a batch of one decided
-- first, in straight line: its record, its two locks in the global order (org, then agent), the
-- batch read, the checks in the contract's order and the write of a run of one. The read, the
-- checks and the write are those of the batch path below, restated: tests/integration/
-- reservations.rs holds both to one model of the rules (about a quarter of its random batches
-- hold one request), so the two cannot drift apart unnoticed.
CREATE OR REPLACE FUNCTION reserve_actions(p_requests jsonb)
    RETURNS TABLE (r_ord bigint, r_limit_type text, r_current bigint, r_max bigint, r_reset_at timestamptz)
    LANGUAGE plpgsql AS
$$
DECLARE
    l record;
    q record;
    p record;
    s record;
    v_day date;
    v_month date;
    v_prev_day date;
    v_count bigint;
    v_ord bigint := 0;
    v_read boolean;
    -- The run's reservations not written yet: their slots, intents and sums (see above).
    w_n int := 0;
    w_ids uuid[] := '{}';
    w_ats timestamptz[] := '{}';
    w_ords bigint[] := '{}';
    w_owners uuid[] := '{}';
    w_nows timestamptz[] := '{}';
    w_costs bigint[] := '{}';
    w_intents jsonb[] := '{}';
    w_spend bigint := 0;
    w_agent text;
    w_org text;
    w_contact text;
    w_day date;
    w_month date;
BEGIN
    -- A batch of one request (every lone send) is decided in straight line: no lock-key statement,
    -- no runs, no closing element. The same read, the same checks in the same order, and the
    -- write of a run of one, at once (0041's header).
    IF jsonb_array_length(p_requests) = 1 THEN
        SELECT * INTO q FROM jsonb_to_record(p_requests -> 0) AS x(
            "id" uuid, "agent" text, "org" text, "now" timestamptz, "cost" bigint,
            "perMinute" bigint, "perHour" bigint, "perDay" bigint, "spendDay" bigint, "spendMonth" bigint,
            "orgSpendDay" bigint, "orgSpendMonth" bigint, "contact" text, "contactMax" bigint,
            "owner" uuid, "intent" jsonb);
        -- The global lock order: its org's (tier 0), then its agent's (tier 1).
        PERFORM pg_advisory_xact_lock(hashtext('commguard.limits.org.' || q."org")),
                pg_advisory_xact_lock(hashtext('commguard.limits.agent.' || q."agent"));
        v_day := (q."now" AT TIME ZONE 'UTC')::date;
        v_month := date_trunc('month', q."now" AT TIME ZONE 'UTC')::date;
        SELECT COALESCE(la.ord, 0) AS last_ord, la.at AS last_at,
               mi.ord AS m_first, mi.at AS m_oldest,
               (SELECT count(*) FROM recent_actions r
                 WHERE mi.ord IS NOT NULL AND r.agent_id = q."agent" AND r.released AND r.ord > mi.ord) AS m_released,
               ho.ord AS h_first, ho.at AS h_oldest,
               (SELECT count(*) FROM recent_actions r
                 WHERE ho.ord IS NOT NULL AND r.agent_id = q."agent" AND r.released AND r.ord > ho.ord) AS h_released,
               COALESCE(ad.actions, 0) AS day_actions, COALESCE(ad.spend, 0) AS day_spend,
               COALESCE(am.spend, 0) AS month_spend,
               COALESCE(od.spend, 0) AS org_day_spend, COALESCE(om.spend, 0) AS org_month_spend,
               COALESCE(ct.actions, 0) AS contact_actions
          INTO s
          FROM (SELECT 1) AS one
          LEFT JOIN LATERAL (SELECT r.ord, r.at FROM recent_actions r
                              WHERE r.agent_id = q."agent" ORDER BY r.ord DESC LIMIT 1) la ON true
          LEFT JOIN LATERAL (SELECT r.ord, r.at FROM recent_actions r
                              WHERE q."perMinute" IS NOT NULL AND r.agent_id = q."agent" AND NOT r.released
                                AND r.at > q."now" - interval '60 seconds'
                              ORDER BY r.at, r.ord LIMIT 1) mi ON true
          LEFT JOIN LATERAL (SELECT r.ord, r.at FROM recent_actions r
                              WHERE q."perHour" IS NOT NULL AND r.agent_id = q."agent" AND NOT r.released
                                AND r.at > q."now" - interval '3600 seconds'
                              ORDER BY r.at, r.ord LIMIT 1) ho ON true
          LEFT JOIN usage_counters ad
                 ON ad.scope = 'agent' AND ad.key = q."agent" AND ad.period = 'day' AND ad.period_start = v_day
          LEFT JOIN usage_counters am
                 ON am.scope = 'agent' AND am.key = q."agent" AND am.period = 'month' AND am.period_start = v_month
          LEFT JOIN usage_counters od
                 ON od.scope = 'org' AND od.key = q."org" AND od.period = 'day' AND od.period_start = v_day
          LEFT JOIN usage_counters om
                 ON om.scope = 'org' AND om.key = q."org" AND om.period = 'month' AND om.period_start = v_month
          LEFT JOIN usage_counters ct
                 ON ct.scope = 'contact' AND ct.key = q."agent" || '|' || q."contact" AND ct.period = 'day'
                AND ct.period_start = v_day;
        IF q."perMinute" IS NOT NULL THEN
            v_count := CASE WHEN s.m_first IS NULL THEN 0 ELSE s.last_ord - s.m_first + 1 - s.m_released END;
            IF v_count >= q."perMinute" THEN
                r_limit_type := 'per-minute'; r_current := v_count; r_max := q."perMinute";
                r_reset_at := s.m_oldest + interval '60 seconds';
            END IF;
        END IF;
        IF r_limit_type IS NULL AND q."perHour" IS NOT NULL THEN
            v_count := CASE WHEN s.h_first IS NULL THEN 0 ELSE s.last_ord - s.h_first + 1 - s.h_released END;
            IF v_count >= q."perHour" THEN
                r_limit_type := 'per-hour'; r_current := v_count; r_max := q."perHour";
                r_reset_at := s.h_oldest + interval '3600 seconds';
            END IF;
        END IF;
        IF r_limit_type IS NULL AND q."perDay" IS NOT NULL AND s.day_actions >= q."perDay" THEN
            r_limit_type := 'per-day'; r_current := s.day_actions; r_max := q."perDay";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."spendDay" IS NOT NULL AND s.day_spend >= q."spendDay" THEN
            r_limit_type := 'daily-spend'; r_current := s.day_spend; r_max := q."spendDay";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."spendMonth" IS NOT NULL AND s.month_spend >= q."spendMonth" THEN
            r_limit_type := 'monthly-spend'; r_current := s.month_spend; r_max := q."spendMonth";
            r_reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."contact" IS NOT NULL AND q."contactMax" IS NOT NULL
           AND s.contact_actions >= q."contactMax" THEN
            r_limit_type := 'contact-frequency'; r_current := s.contact_actions; r_max := q."contactMax";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."orgSpendDay" IS NOT NULL AND s.org_day_spend >= q."orgSpendDay" THEN
            r_limit_type := 'org_spend_day'; r_current := s.org_day_spend; r_max := q."orgSpendDay";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."orgSpendMonth" IS NOT NULL AND s.org_month_spend >= q."orgSpendMonth" THEN
            r_limit_type := 'org_spend_month'; r_current := s.org_month_spend; r_max := q."orgSpendMonth";
            r_reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL THEN
            WITH slot AS (
                INSERT INTO recent_actions (reservation_id, agent_id, at, ord)
                VALUES (q."id", q."agent", GREATEST(q."now", s.last_at), s.last_ord + 1)
            ), stored AS (
                INSERT INTO outbound_intents (id, agent_id, org_id, owner, at, cost, contact, intent)
                SELECT q."id", q."agent", q."org", q."owner", q."now", q."cost", q."contact", q."intent"
                 WHERE q."intent" IS NOT NULL
            )
            INSERT INTO usage_counters AS u (scope, key, period, period_start, actions, spend)
            SELECT v.scope, v.key, v.period, v.period_start, v.actions, v.spend
              FROM (VALUES ('agent', q."agent", 'day', v_day, 1::bigint, q."cost"),
                           ('agent', q."agent", 'month', v_month, 1::bigint, q."cost"),
                           ('org', q."org", 'day', v_day, 1::bigint, q."cost"),
                           ('org', q."org", 'month', v_month, 1::bigint, q."cost"),
                           ('contact', q."agent" || '|' || q."contact", 'day', v_day, 1::bigint, 0::bigint))
                   AS v(scope, key, period, period_start, actions, spend)
             WHERE v.key IS NOT NULL
            ON CONFLICT (scope, key, period, period_start)
                DO UPDATE SET actions = u.actions + EXCLUDED.actions, spend = u.spend + EXCLUDED.spend;
        END IF;
        r_ord := 1;
        RETURN NEXT;
        RETURN;
    END IF;
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
    -- jsonb_to_recordset yields the array's elements in order: v_ord is each one's place. The
    -- last element, `{}`, ends the last run (its agent is NULL) and is not a request.
    FOR q IN
        SELECT * FROM jsonb_to_recordset(p_requests || '[{}]'::jsonb) AS x(
            "id" uuid, "agent" text, "org" text, "now" timestamptz, "cost" bigint,
            "perMinute" bigint, "perHour" bigint, "perDay" bigint, "spendDay" bigint, "spendMonth" bigint,
            "orgSpendDay" bigint, "orgSpendMonth" bigint, "contact" text, "contactMax" bigint,
            "owner" uuid, "intent" jsonb)
    LOOP
        v_ord := v_ord + 1;
        v_day := (q."now" AT TIME ZONE 'UTC')::date;
        v_month := date_trunc('month', q."now" AT TIME ZONE 'UTC')::date;
        r_limit_type := NULL; r_current := NULL; r_max := NULL; r_reset_at := NULL;

        -- The previous request's read, advanced by its reservation, is this one's (see above).
        v_read := v_ord = 1 OR q."agent" IS NULL;
        IF NOT v_read THEN
            v_read := NOT (p."agent" = q."agent" AND p."org" = q."org" AND p."contact" IS NOT DISTINCT FROM q."contact"
                           AND (p."perMinute" IS NULL) = (q."perMinute" IS NULL)
                           AND (p."perHour" IS NULL) = (q."perHour" IS NULL)
                           AND p."now" <= q."now" AND v_prev_day = v_day
                           AND (s.m_first IS NULL OR s.m_oldest > q."now" - interval '60 seconds')
                           AND (s.h_first IS NULL OR s.h_oldest > q."now" - interval '3600 seconds'));
        END IF;
        -- A run ends where a request reads afresh: its reservations are written first, so the read
        -- sees them. A run of one is written as 0032 wrote each request; a longer one by one
        -- statement for its slots, one for its intents (if any) and one for its counters, which
        -- all belong to the same agent, org, contact, UTC day and month.
        IF v_read AND w_n = 1 THEN
            WITH slot AS (
                INSERT INTO recent_actions (reservation_id, agent_id, at, ord)
                VALUES (w_ids[1], w_agent, w_ats[1], w_ords[1])
            ), stored AS (
                INSERT INTO outbound_intents (id, agent_id, org_id, owner, at, cost, contact, intent)
                SELECT w_ids[1], w_agent, w_org, w_owners[1], w_nows[1], w_costs[1], w_contact, w_intents[1]
                 WHERE w_intents[1] IS NOT NULL
            )
            INSERT INTO usage_counters AS u (scope, key, period, period_start, actions, spend)
            SELECT v.scope, v.key, v.period, v.period_start, v.actions, v.spend
              FROM (VALUES ('agent', w_agent, 'day', w_day, 1::bigint, w_spend),
                           ('agent', w_agent, 'month', w_month, 1::bigint, w_spend),
                           ('org', w_org, 'day', w_day, 1::bigint, w_spend),
                           ('org', w_org, 'month', w_month, 1::bigint, w_spend),
                           ('contact', w_agent || '|' || w_contact, 'day', w_day, 1::bigint, 0::bigint))
                   AS v(scope, key, period, period_start, actions, spend)
             WHERE v.key IS NOT NULL
            ON CONFLICT (scope, key, period, period_start)
                DO UPDATE SET actions = u.actions + EXCLUDED.actions, spend = u.spend + EXCLUDED.spend;
        ELSIF v_read AND w_n > 1 THEN
            INSERT INTO recent_actions (reservation_id, agent_id, at, ord)
            SELECT w.id, w_agent, w.at, w.ord FROM unnest(w_ids, w_ats, w_ords) AS w(id, at, ord);
            IF cardinality(array_remove(w_intents, NULL)) > 0 THEN
                INSERT INTO outbound_intents (id, agent_id, org_id, owner, at, cost, contact, intent)
                SELECT w.id, w_agent, w_org, w.owner, w.at, w.cost, w_contact, w.intent
                  FROM unnest(w_ids, w_owners, w_nows, w_costs, w_intents) AS w(id, owner, at, cost, intent)
                 WHERE w.intent IS NOT NULL;
            END IF;
            INSERT INTO usage_counters AS u (scope, key, period, period_start, actions, spend)
            SELECT v.scope, v.key, v.period, v.period_start, v.actions, v.spend
              FROM (VALUES ('agent', w_agent, 'day', w_day, w_n::bigint, w_spend),
                           ('agent', w_agent, 'month', w_month, w_n::bigint, w_spend),
                           ('org', w_org, 'day', w_day, w_n::bigint, w_spend),
                           ('org', w_org, 'month', w_month, w_n::bigint, w_spend),
                           ('contact', w_agent || '|' || w_contact, 'day', w_day, w_n::bigint, 0::bigint))
                   AS v(scope, key, period, period_start, actions, spend)
             WHERE v.key IS NOT NULL
            ON CONFLICT (scope, key, period, period_start)
                DO UPDATE SET actions = u.actions + EXCLUDED.actions, spend = u.spend + EXCLUDED.spend;
        END IF;
        IF v_read AND w_n > 0 THEN
            w_n := 0; w_spend := 0;
            w_ids := '{}'; w_ats := '{}'; w_ords := '{}'; w_owners := '{}'; w_nows := '{}'; w_costs := '{}';
            w_intents := '{}';
        END IF;
        EXIT WHEN q."agent" IS NULL;
        IF v_read THEN
            -- Everything the checks read, in one statement. A window's count is the ordinals from its
            -- first live action to the last one, less the released ones among them (0013).
            SELECT COALESCE(la.ord, 0) AS last_ord, la.at AS last_at,
                   mi.ord AS m_first, mi.at AS m_oldest,
                   (SELECT count(*) FROM recent_actions r
                     WHERE mi.ord IS NOT NULL AND r.agent_id = q."agent" AND r.released AND r.ord > mi.ord) AS m_released,
                   ho.ord AS h_first, ho.at AS h_oldest,
                   (SELECT count(*) FROM recent_actions r
                     WHERE ho.ord IS NOT NULL AND r.agent_id = q."agent" AND r.released AND r.ord > ho.ord) AS h_released,
                   COALESCE(ad.actions, 0) AS day_actions, COALESCE(ad.spend, 0) AS day_spend,
                   COALESCE(am.spend, 0) AS month_spend,
                   COALESCE(od.spend, 0) AS org_day_spend, COALESCE(om.spend, 0) AS org_month_spend,
                   COALESCE(ct.actions, 0) AS contact_actions
              INTO s
              FROM (SELECT 1) AS one
              LEFT JOIN LATERAL (SELECT r.ord, r.at FROM recent_actions r
                                  WHERE r.agent_id = q."agent" ORDER BY r.ord DESC LIMIT 1) la ON true
              LEFT JOIN LATERAL (SELECT r.ord, r.at FROM recent_actions r
                                  WHERE q."perMinute" IS NOT NULL AND r.agent_id = q."agent" AND NOT r.released
                                    AND r.at > q."now" - interval '60 seconds'
                                  ORDER BY r.at, r.ord LIMIT 1) mi ON true
              LEFT JOIN LATERAL (SELECT r.ord, r.at FROM recent_actions r
                                  WHERE q."perHour" IS NOT NULL AND r.agent_id = q."agent" AND NOT r.released
                                    AND r.at > q."now" - interval '3600 seconds'
                                  ORDER BY r.at, r.ord LIMIT 1) ho ON true
              LEFT JOIN usage_counters ad
                     ON ad.scope = 'agent' AND ad.key = q."agent" AND ad.period = 'day' AND ad.period_start = v_day
              LEFT JOIN usage_counters am
                     ON am.scope = 'agent' AND am.key = q."agent" AND am.period = 'month' AND am.period_start = v_month
              LEFT JOIN usage_counters od
                     ON od.scope = 'org' AND od.key = q."org" AND od.period = 'day' AND od.period_start = v_day
              LEFT JOIN usage_counters om
                     ON om.scope = 'org' AND om.key = q."org" AND om.period = 'month' AND om.period_start = v_month
              LEFT JOIN usage_counters ct
                     ON ct.scope = 'contact' AND ct.key = q."agent" || '|' || q."contact" AND ct.period = 'day'
                    AND ct.period_start = v_day;
        END IF;

        -- The checks in the contract's order (CONTRACT §9.1, docs/limits.md); the first that refuses
        -- is named.
        IF q."perMinute" IS NOT NULL THEN
            v_count := CASE WHEN s.m_first IS NULL THEN 0 ELSE s.last_ord - s.m_first + 1 - s.m_released END;
            IF v_count >= q."perMinute" THEN
                r_limit_type := 'per-minute'; r_current := v_count; r_max := q."perMinute";
                r_reset_at := s.m_oldest + interval '60 seconds';
            END IF;
        END IF;
        IF r_limit_type IS NULL AND q."perHour" IS NOT NULL THEN
            v_count := CASE WHEN s.h_first IS NULL THEN 0 ELSE s.last_ord - s.h_first + 1 - s.h_released END;
            IF v_count >= q."perHour" THEN
                r_limit_type := 'per-hour'; r_current := v_count; r_max := q."perHour";
                r_reset_at := s.h_oldest + interval '3600 seconds';
            END IF;
        END IF;
        IF r_limit_type IS NULL AND q."perDay" IS NOT NULL AND s.day_actions >= q."perDay" THEN
            r_limit_type := 'per-day'; r_current := s.day_actions; r_max := q."perDay";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."spendDay" IS NOT NULL AND s.day_spend >= q."spendDay" THEN
            r_limit_type := 'daily-spend'; r_current := s.day_spend; r_max := q."spendDay";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."spendMonth" IS NOT NULL AND s.month_spend >= q."spendMonth" THEN
            r_limit_type := 'monthly-spend'; r_current := s.month_spend; r_max := q."spendMonth";
            r_reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."contact" IS NOT NULL AND q."contactMax" IS NOT NULL
           AND s.contact_actions >= q."contactMax" THEN
            r_limit_type := 'contact-frequency'; r_current := s.contact_actions; r_max := q."contactMax";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."orgSpendDay" IS NOT NULL AND s.org_day_spend >= q."orgSpendDay" THEN
            r_limit_type := 'org_spend_day'; r_current := s.org_day_spend; r_max := q."orgSpendDay";
            r_reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        END IF;
        IF r_limit_type IS NULL AND q."orgSpendMonth" IS NOT NULL AND s.org_month_spend >= q."orgSpendMonth" THEN
            r_limit_type := 'org_spend_month'; r_current := s.org_month_spend; r_max := q."orgSpendMonth";
            r_reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        END IF;

        IF r_limit_type IS NULL THEN
            -- Reserved: written when its run ends (above).
            w_n := w_n + 1;
            w_ids := array_append(w_ids, q."id");
            w_ats := array_append(w_ats, GREATEST(q."now", s.last_at));
            w_ords := array_append(w_ords, (s.last_ord + 1));
            w_owners := array_append(w_owners, q."owner");
            w_nows := array_append(w_nows, q."now");
            w_costs := array_append(w_costs, q."cost");
            w_intents := array_append(w_intents, q."intent");
            w_spend := w_spend + q."cost";
            w_agent := q."agent"; w_org := q."org"; w_contact := q."contact"; w_day := v_day; w_month := v_month;
            -- What the read would now return for the next request (as above): the new slot
            -- continues the order and, in a window that had no live action, is its first.
            s.last_at := GREATEST(q."now", s.last_at);
            s.last_ord := s.last_ord + 1;
            IF q."perMinute" IS NOT NULL AND s.m_first IS NULL THEN
                s.m_first := s.last_ord; s.m_oldest := s.last_at; s.m_released := 0;
            END IF;
            IF q."perHour" IS NOT NULL AND s.h_first IS NULL THEN
                s.h_first := s.last_ord; s.h_oldest := s.last_at; s.h_released := 0;
            END IF;
            s.day_actions := s.day_actions + 1;
            s.day_spend := s.day_spend + q."cost";
            s.month_spend := s.month_spend + q."cost";
            s.org_day_spend := s.org_day_spend + q."cost";
            s.org_month_spend := s.org_month_spend + q."cost";
            IF q."contact" IS NOT NULL THEN
                s.contact_actions := s.contact_actions + 1;
            END IF;
        END IF;
        p := q;
        v_prev_day := v_day;
        r_ord := v_ord;
        RETURN NEXT;
    END LOOP;
END;
$$;
