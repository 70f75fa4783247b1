-- 0026: outbound intents stay in their heap row.
--
-- An intent (the sealed fallback event, its skeleton and context) is about 3 KB of jsonb that
-- does not compress, so above the default 2 KB toast target every reservation wrote it out of
-- line: two TOAST chunks and their index entries, deleted again a few milliseconds later when
-- the send completes (the bench's TOAST table held 10 MB after a few thousand sends). With the
-- target at its maximum the row is written whole into the heap (a page holds two); a larger one
-- is still toasted as before.
ALTER TABLE outbound_intents SET (toast_tuple_target = 8160);
