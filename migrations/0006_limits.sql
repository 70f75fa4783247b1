-- 0006: tool limits (CONTRACT §9), exact across instances. A send reserves a slot and its
-- estimated cost before the provider is called and confirms or releases it after. Checks read
-- bounded state only: rolling windows count the agent's actions of the last hour (at most its
-- hourly limit of rows, since nothing past the limit is ever inserted), calendar windows read one
-- counter row each. History in the event store is never scanned.

-- Actions of the last hour per agent, for the rolling per-minute and per-hour windows. Rows
-- older than an hour are deleted by a job (this is operational state, not the event store).
CREATE TABLE recent_actions
(
    reservation_id uuid PRIMARY KEY,
    agent_id       text        NOT NULL,
    at             timestamptz NOT NULL
);
CREATE INDEX recent_actions_agent ON recent_actions (agent_id, at);

-- Calendar counters: (scope agent|org, key, period day|month, start) → actions, spend (micro-$).
CREATE TABLE usage_counters
(
    scope        text   NOT NULL,
    key          text   NOT NULL,
    period       text   NOT NULL,
    period_start date   NOT NULL,
    actions      bigint NOT NULL DEFAULT 0,
    spend        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key, period, period_start)
);

-- Reserves one action for `p_agent` at `p_now` with estimated cost `p_cost`, or names the first
-- limit that refuses it. Limits: per-minute, per-hour, per-day, daily-spend, monthly-spend,
-- org_spend_day, org_spend_month (NULL = no limit). The agent's advisory lock serializes its
-- reservations on every instance; an org with a spend cap serializes on the org as well.
CREATE FUNCTION reserve_action(
    p_reservation uuid, p_agent text, p_org text, p_now timestamptz, p_cost bigint,
    p_per_minute bigint, p_per_hour bigint, p_per_day bigint,
    p_spend_day bigint, p_spend_month bigint, p_org_spend_day bigint, p_org_spend_month bigint,
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

    INSERT INTO recent_actions (reservation_id, agent_id, at) VALUES (p_reservation, p_agent, p_now);
    INSERT INTO usage_counters AS u (scope, key, period, period_start, actions, spend)
    VALUES ('agent', p_agent, 'day', v_day, 1, p_cost), ('agent', p_agent, 'month', v_month, 1, p_cost),
           ('org', p_org, 'day', v_day, 1, p_cost), ('org', p_org, 'month', v_month, 1, p_cost)
    ON CONFLICT (scope, key, period, period_start)
        DO UPDATE SET actions = u.actions + EXCLUDED.actions, spend = u.spend + EXCLUDED.spend;
    -- limit_type NULL: reserved.
END;
$$;

-- Undoes a reservation (the provider failed): the slot and its estimated cost come back.
CREATE FUNCTION release_action(p_reservation uuid, p_agent text, p_org text, p_at timestamptz, p_cost bigint)
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
            ('org', p_org, 'day', v_day), ('org', p_org, 'month', v_month));
END;
$$;

-- Replaces the estimated cost of a reservation with the provider's actual cost.
CREATE FUNCTION settle_action_cost(p_agent text, p_org text, p_at timestamptz, p_delta bigint)
    RETURNS void LANGUAGE sql AS
$$
    UPDATE usage_counters SET spend = spend + p_delta
     WHERE p_delta <> 0 AND (scope, key, period, period_start) IN
           (('agent', p_agent, 'day', (p_at AT TIME ZONE 'UTC')::date),
            ('agent', p_agent, 'month', date_trunc('month', p_at AT TIME ZONE 'UTC')::date),
            ('org', p_org, 'day', (p_at AT TIME ZONE 'UTC')::date),
            ('org', p_org, 'month', date_trunc('month', p_at AT TIME ZONE 'UTC')::date));
$$;
