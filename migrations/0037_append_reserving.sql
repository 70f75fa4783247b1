-- 0037: a send that reaches nobody is reserved and recorded by one statement.
--
-- A send to the mock provider (sandbox orgs, demo) cost two statements and two durable commits:
-- `reserve_actions` with the send's sealed intent (≈3 KB of jsonb, written and deleted again),
-- then `append_batch` with its `MessageSent`, settling that intent. The intent exists for a
-- crash between the two, while a real provider may already have the message; the mock's answer
-- is known before anything is reserved, so here the reservation and the event it ends in
-- commit together or not at all, and there is no intent (docs/performance.md, issue 19: the
-- 11th session's floor put one statement without the intent at 0.87× of the send's database
-- time as built).
--
-- `append_reserving` decides `p_requests` (as `reserve_actions`, in their order, without
-- intents) and appends the batch (as `append_batch`) in one transaction. Every request must be
-- reserved and every head must move, or nothing is written:
--   * a refused request fails the statement with SQLSTATE `CG003`, its DETAIL a JSON array of
--     [id, limit type, current, maximum, reset at] for each refused request. The caller answers
--     those sends with their refusals (recorded as blocked by ordinary appends) and runs the
--     statement again without them: their events were chained in the server on the assumption
--     that they would be stored, so the rest of their stream's events must be chained again. A
--     refused request reserved nothing, so the others' decisions are the same the second time
--     unless something else committed between the two;
--   * a head with reservations that did not move (another instance appended to its stream first)
--     fails it with 40001: reservations must not outlive an event that was not stored. The
--     committer answers every append of the statement as a conflict, and each is appended again
--     at its stream's new head.
-- Locks: `reserve_actions` takes its org and agent advisory locks in one global order before
-- `append_batch` locks any chain head (in their own global order); nothing takes a chain head
-- and then an advisory lock, so the two orders cannot cross.
CREATE FUNCTION append_reserving(
    p_requests jsonb,
    h_type text[], h_id text[], h_expected bigint[], h_last bigint[], h_hash text[],
    e_head int[], e_sequence bigint[], e_type text[], e_version text[], e_payload json[], e_metadata json[],
    e_id uuid[], e_at timestamptz[], e_org text[], e_prev text[], e_hash text[], e_settles uuid[], e_keys uuid[],
    OUT base bigint, OUT moved boolean[])
    LANGUAGE plpgsql AS
$$
DECLARE
    v_refused jsonb;
BEGIN
    SELECT jsonb_agg(jsonb_build_array(p_requests -> (r.r_ord - 1)::int ->> 'id', r.r_limit_type, r.r_current,
                                       r.r_max, r.r_reset_at))
      INTO v_refused
      FROM reserve_actions(p_requests) r
     WHERE r.r_limit_type IS NOT NULL;
    IF v_refused IS NOT NULL THEN
        RAISE EXCEPTION 'reservations refused' USING ERRCODE = 'CG003', DETAIL = v_refused::text;
    END IF;
    SELECT a.base, a.moved INTO base, moved
      FROM append_batch(h_type, h_id, h_expected, h_last, h_hash, e_head, e_sequence, e_type, e_version,
                        e_payload, e_metadata, e_id, e_at, e_org, e_prev, e_hash, e_settles, e_keys) a;
    -- Rare (another instance appended first): only then are the stalled heads compared with
    -- the requests' agents, whose events are appended to their own streams.
    IF false = ANY(moved) THEN
        FOR i IN 1 .. cardinality(h_type) LOOP
            IF NOT moved[i] AND h_type[i] = 'agent'
               AND EXISTS (SELECT FROM jsonb_array_elements(p_requests) q WHERE q ->> 'agent' = h_id[i]) THEN
                RAISE EXCEPTION 'a stream moved under a reserving append' USING ERRCODE = '40001';
            END IF;
        END LOOP;
    END IF;
END;
$$;
