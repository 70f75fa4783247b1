-- 0036: a settled cost counts on the day it is settled, for the limits as for usage and billing.
--
-- A call's price is known only when its final status arrives (or later, migration 0035), and it
-- was added to the spend counters of the day and month the call was placed, while the usage and
-- billing views count the event that carries it, on its own day: a call placed at 23:59:50 and
-- priced at 00:00:30 counted on one day for the caps and on the next for billing. The caps now
-- count it when it is known as well. Those counters may not exist yet for that day (the
-- reservation of the call created its own day's), so the settlement creates them: an upsert
-- instead of 0013's update. Otherwise the function is 0013's, under the agent's lock.
CREATE OR REPLACE FUNCTION settle_action_cost(p_agent text, p_org text, p_at timestamptz, p_delta bigint)
    RETURNS void LANGUAGE plpgsql AS
$$
BEGIN
    IF p_delta = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('commguard.limits.agent.' || p_agent));
    INSERT INTO usage_counters AS u (scope, key, period, period_start, spend)
    VALUES ('agent', p_agent, 'day', (p_at AT TIME ZONE 'UTC')::date, p_delta),
           ('agent', p_agent, 'month', date_trunc('month', p_at AT TIME ZONE 'UTC')::date, p_delta),
           ('org', p_org, 'day', (p_at AT TIME ZONE 'UTC')::date, p_delta),
           ('org', p_org, 'month', date_trunc('month', p_at AT TIME ZONE 'UTC')::date, p_delta)
    ON CONFLICT (scope, key, period, period_start) DO UPDATE SET spend = u.spend + EXCLUDED.spend;
END;
$$;
