-- 0030: outbound intents lose their index on `owner`.
--
-- Profile (BENCH_PG_STATS=1 scripts/bench.sh send, docs/performance.md "What a send writes"): a
-- send wrote 27.6 WAL records, nine times pgbench's single-row insert, and Postgres CPU per send
-- follows that count. One of them was the entry every reservation added to `outbound_intents_owner`
-- (and the index entry vacuum later removed again, as the intent lives a few milliseconds). No
-- query reads that index: the reconciler looks for intents whose owner is *not* this instance
-- (`owner <> $1`, with the heartbeats joined), which no btree can seek, and the table holds only
-- intents in flight or awaiting a reconciler, so it reads it whole either way.
DROP INDEX outbound_intents_owner;
