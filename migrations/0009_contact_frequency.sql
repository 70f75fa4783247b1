-- 0009: contact frequency (CONTRACT §9.1 row 6): an agent's voice actions to one number per UTC
-- day, counted under the number's blind index (never the number itself). `reserve_action` and
-- `release_action` gain the contact; the 0006 versions are replaced.
DROP FUNCTION reserve_action(uuid, text, text, timestamptz, bigint, bigint, bigint, bigint, bigint, bigint, bigint, bigint);
DROP FUNCTION release_action(uuid, text, text, timestamptz, bigint);

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
    v_count bigint;
    v_oldest timestamptz;
    v_actions bigint;
    v_spend bigint;
BEGIN
    IF p_org_spend_day IS NOT NULL OR p_org_spend_month IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('commguard.limits.org.' || p_org));
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('commguard.limits.agent.' || p_agent));

    SELECT count(*), min(at) INTO v_count, v_oldest FROM recent_actions
     WHERE agent_id = p_agent AND at > p_now - interval '60 seconds';
    IF p_per_minute IS NOT NULL AND v_count >= p_per_minute THEN
        limit_type := 'per-minute'; current_value := v_count; max_value := p_per_minute;
        reset_at := v_oldest + interval '60 seconds'; RETURN;
    END IF;
    SELECT count(*), min(at) INTO v_count, v_oldest FROM recent_actions
     WHERE agent_id = p_agent AND at > p_now - interval '3600 seconds';
    IF p_per_hour IS NOT NULL AND v_count >= p_per_hour THEN
        limit_type := 'per-hour'; current_value := v_count; max_value := p_per_hour;
        reset_at := v_oldest + interval '3600 seconds'; RETURN;
    END IF;

    SELECT COALESCE(max(actions), 0), COALESCE(max(spend), 0) INTO v_actions, v_spend FROM usage_counters
     WHERE scope = 'agent' AND key = p_agent AND period = 'day' AND period_start = v_day;
    IF p_per_day IS NOT NULL AND v_actions >= p_per_day THEN
        limit_type := 'per-day'; current_value := v_actions; max_value := p_per_day;
        reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
    END IF;
    IF p_spend_day IS NOT NULL AND v_spend + p_cost > p_spend_day THEN
        limit_type := 'daily-spend'; current_value := v_spend; max_value := p_spend_day;
        reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
    END IF;
    SELECT COALESCE(max(spend), 0) INTO v_spend FROM usage_counters
     WHERE scope = 'agent' AND key = p_agent AND period = 'month' AND period_start = v_month;
    IF p_spend_month IS NOT NULL AND v_spend + p_cost > p_spend_month THEN
        limit_type := 'monthly-spend'; current_value := v_spend; max_value := p_spend_month;
        reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC'; RETURN;
    END IF;
    IF p_org_spend_day IS NOT NULL THEN
        SELECT COALESCE(max(spend), 0) INTO v_spend FROM usage_counters
         WHERE scope = 'org' AND key = p_org AND period = 'day' AND period_start = v_day;
        IF v_spend + p_cost > p_org_spend_day THEN
            limit_type := 'org_spend_day'; current_value := v_spend; max_value := p_org_spend_day;
            reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;
    IF p_org_spend_month IS NOT NULL THEN
        SELECT COALESCE(max(spend), 0) INTO v_spend FROM usage_counters
         WHERE scope = 'org' AND key = p_org AND period = 'month' AND period_start = v_month;
        IF v_spend + p_cost > p_org_spend_month THEN
            limit_type := 'org_spend_month'; current_value := v_spend; max_value := p_org_spend_month;
            reset_at := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;

    IF p_contact IS NOT NULL AND p_contact_max IS NOT NULL THEN
        SELECT COALESCE(max(actions), 0) INTO v_actions FROM usage_counters
         WHERE scope = 'contact' AND key = p_agent || '|' || p_contact AND period = 'day' AND period_start = v_day;
        IF v_actions >= p_contact_max THEN
            limit_type := 'contact-frequency'; current_value := v_actions; max_value := p_contact_max;
            reset_at := (v_day + 1)::timestamp AT TIME ZONE 'UTC'; RETURN;
        END IF;
    END IF;

    INSERT INTO recent_actions (reservation_id, agent_id, at) VALUES (p_reservation, p_agent, p_now);
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

-- Undoes a reservation (the provider failed): the slot, its estimated cost and its contact count.
CREATE FUNCTION release_action(p_reservation uuid, p_agent text, p_org text, p_at timestamptz, p_cost bigint, p_contact text)
    RETURNS void LANGUAGE plpgsql AS
$$
DECLARE
    v_day   date := (p_at AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', p_at AT TIME ZONE 'UTC')::date;
BEGIN
    DELETE FROM recent_actions WHERE reservation_id = p_reservation;
    UPDATE usage_counters SET actions = actions - 1, spend = spend - p_cost
     WHERE (scope, key, period, period_start) IN
           (('agent', p_agent, 'day', v_day), ('agent', p_agent, 'month', v_month),
            ('org', p_org, 'day', v_day), ('org', p_org, 'month', v_month),
            ('contact', p_agent || '|' || COALESCE(p_contact, ''), 'day', v_day));
END;
$$;
