-- 0033: the brute-force lockout counts failures in a sliding window.
--
-- Until now an IP's failures were counted from the first one in a fixed window: once that first
-- failure was older than BRUTE_FORCE_WINDOW_SECONDS the count restarted at 1, however recent the
-- others were. With a 5 s window, 1 failure at t=0, 8 at t=4.4 s and 9 more at t=5.5 s locked
-- nothing (17 failures in 1.2 s); the contract locks on "the 10th failure within the window". Now a
-- row keeps the instants of its last BRUTE_FORCE_MAX_FAILURES failures (`recent`), and a failure
-- locks the IP when it and the ones before it inside the window reach the maximum.
--
-- `failures` keeps its meaning for readers: the failures that count (those in the window; at the
-- lock, the maximum), and beyond the maximum the failures counted while locked, which are answered
-- 429 and never extend the lock. An expired lock starts the count afresh.
ALTER TABLE auth_failures ADD COLUMN recent timestamptz[] NOT NULL DEFAULT '{}';

CREATE FUNCTION count_auth_failure(
    p_key text, p_now timestamptz, p_max integer, p_window interval, p_lock interval,
    OUT failures integer, OUT locked_until timestamptz)
    LANGUAGE plpgsql AS
$$
#variable_conflict use_column
DECLARE
    r auth_failures%ROWTYPE;
    v_recent timestamptz[];
BEGIN
    INSERT INTO auth_failures (ip_key, failures, window_start, locked_until)
    VALUES (p_key, 0, p_now, NULL)
    ON CONFLICT (ip_key) DO NOTHING;
    -- Failures of one IP on every instance take their turn here.
    SELECT * INTO r FROM auth_failures WHERE ip_key = p_key FOR UPDATE;
    IF r.locked_until > p_now THEN
        failures := r.failures + 1;
        locked_until := r.locked_until;
        UPDATE auth_failures SET failures = count_auth_failure.failures WHERE ip_key = p_key;
        RETURN;
    END IF;
    -- The earlier failures still inside the window (none after an expired lock), this one, and at
    -- most the last p_max of them.
    v_recent := CASE WHEN r.locked_until IS NULL
                     THEN ARRAY(SELECT t FROM unnest(r.recent) AS t WHERE t > p_now - p_window ORDER BY t)
                     ELSE '{}' END || p_now;
    v_recent := v_recent[greatest(1, cardinality(v_recent) - p_max + 1):];
    failures := cardinality(v_recent);
    locked_until := CASE WHEN failures >= p_max THEN p_now + p_lock END;
    UPDATE auth_failures
       SET failures = count_auth_failure.failures, window_start = v_recent[1],
           locked_until = count_auth_failure.locked_until, recent = v_recent
     WHERE ip_key = p_key;
END;
$$;
