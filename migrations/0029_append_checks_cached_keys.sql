-- 0029: an append checks the subject keys its events were sealed under from a cache.
--
-- Profile (BENCH_PG_STATS=1 scripts/bench.sh send, docs/performance.md "Sends"): every sealed
-- event cost a statement of its own before its append — `SELECT 1 FROM data_keys WHERE key_id = $1
-- AND wrapped IS NOT NULL`, the check that a subject key this instance had cached was not destroyed
-- by an erasure on another instance — two per send (its intent and its event), each a round trip
-- and a release ping. Here `append_batch` takes the keys taken from a cache unchecked (`e_keys`,
-- every row's in one array; empty when none) and refuses the whole statement (SQLSTATE `CG002`)
-- when one of them is no longer live: the committer isolates the append concerned, which is
-- sealed again under the live generation. The check reads committed state after the seal began,
-- as the probe did, so an event sealed after an erasure's reply is never stored under the
-- destroyed key. Otherwise the function is 0028's; that version stays for reference.
CREATE FUNCTION append_batch(
    h_type text[], h_id text[], h_expected bigint[], h_last bigint[], h_hash text[],
    e_head int[], e_sequence bigint[], e_type text[], e_version text[], e_payload json[], e_metadata json[],
    e_id uuid[], e_at timestamptz[], e_org text[], e_prev text[], e_hash text[], e_settles uuid[], e_keys uuid[],
    OUT base bigint, OUT moved boolean[])
    LANGUAGE plpgsql AS
$$
DECLARE
    v_settles uuid[];
    v_id uuid;
    v_deleted bigint;
    v_settled bigint := 0;
BEGIN
    -- One probe by primary key each (a few per batch): as a join over the array, the check was
    -- planned afresh on every call (24 µs of planning per send for 38 µs of execution).
    FOREACH v_id IN ARRAY e_keys LOOP
        PERFORM FROM data_keys WHERE key_id = v_id AND wrapped IS NOT NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'a subject key this append was sealed under has been destroyed'
                USING ERRCODE = 'CG002';
        END IF;
    END LOOP;
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
