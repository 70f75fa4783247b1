-- 0028: a completed send's intent is deleted in the transaction that appends its event.
--
-- Profile (scripts/bench.sh send, one session, docs/performance.md "Sends"): after the event was
-- appended, the completed intent was deleted by a statement of its own — its own transaction and
-- durable commit, planned afresh every time (`id = ANY($1)`: 66 µs of planning for 25 µs of
-- execution), a round trip and a task wake-up per lone send. Here `append_batch` takes, beside
-- each event, the outbound intent its append settles (`e_settles`, aligned with the events, or
-- empty when no event of the batch settles one) and deletes those of the heads that moved, in its
-- own transaction: the event and the end of its intent commit together, never one without the
-- other. An append that does not move (its stream moved meanwhile) keeps its intent, as its event
-- is decided again; an append whose intent is already gone (settled by a reconciler meanwhile)
-- fails instead of recording the action a second time. The function of 0014 stays for reference
-- but is no longer called.
CREATE FUNCTION append_batch(
    h_type text[], h_id text[], h_expected bigint[], h_last bigint[], h_hash text[],
    e_head int[], e_sequence bigint[], e_type text[], e_version text[], e_payload json[], e_metadata json[],
    e_id uuid[], e_at timestamptz[], e_org text[], e_prev text[], e_hash text[], e_settles uuid[],
    OUT base bigint, OUT moved boolean[])
    LANGUAGE plpgsql AS
$$
DECLARE
    v_settles uuid[];
    v_id uuid;
    v_deleted bigint;
    v_settled bigint := 0;
BEGIN
    base := pg_current_xact_id()::text::bigint << 12;
    moved := array_fill(false, ARRAY[cardinality(h_type)]);
    FOR i IN 1 .. cardinality(h_type) LOOP
        IF h_expected[i] = 0 THEN
            -- A stream's first append creates its head; if one exists, another append came first.
            INSERT INTO chain_heads (aggregate_type, aggregate_id, last_sequence, last_hash, appended)
            VALUES (h_type[i], h_id[i], h_last[i], h_hash[i], h_last[i])
            ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING;
        ELSE
            UPDATE chain_heads
               SET last_sequence = h_last[i], last_hash = h_hash[i], appended = h_last[i] - h_expected[i]
             WHERE aggregate_type = h_type[i] AND aggregate_id = h_id[i] AND last_sequence = h_expected[i];
        END IF;
        moved[i] := FOUND;
    END LOOP;
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata, position, event_id, occurred_at, org_id, prev_hash, hash)
    SELECT h_type[e.head], h_id[e.head], e.sequence, e.event_type, e.event_version, e.payload, e.metadata,
           base + e.ord - 1, e.event_id, e.occurred_at, e.org_id, e.prev_hash, e.hash
      FROM UNNEST(e_head, e_sequence, e_type, e_version, e_payload, e_metadata, e_id, e_at, e_org, e_prev, e_hash)
           WITH ORDINALITY AS e(head, sequence, event_type, event_version, payload, metadata,
                                event_id, occurred_at, org_id, prev_hash, hash, ord)
     WHERE moved[e.head];
    IF cardinality(e_settles) > 0 THEN
        v_settles := ARRAY(SELECT s.id FROM UNNEST(e_head, e_settles) AS s(head, id)
                            WHERE s.id IS NOT NULL AND moved[s.head]);
        -- One by primary key: `id = ANY(array)` was planned afresh on every call (its custom
        -- plan looked cheaper than the generic one: 36 µs of planning per lone send).
        FOREACH v_id IN ARRAY v_settles LOOP
            DELETE FROM outbound_intents WHERE id = v_id;
            GET DIAGNOSTICS v_deleted = ROW_COUNT;
            v_settled := v_settled + v_deleted;
        END LOOP;
        -- An intent already gone was settled by someone else (a reconciler that took its owner
        -- for dead recorded its fallback event): appending this event too would record the
        -- action twice. The statement fails (the committer retries the others without it) and
        -- the owner settles the intent under its row lock, where it finds it settled.
        IF v_settled < cardinality(v_settles) THEN
            RAISE EXCEPTION 'an outbound intent this append settles is settled already'
                USING ERRCODE = 'CG001';
        END IF;
    END IF;
END;
$$;
