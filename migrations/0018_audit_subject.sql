-- 0018: the data subject each audit row is about (CONTRACT §12 `/audit?subject=`, §15 `audit export`).
--
-- `subject_ref` is the blind index of the phone number or email an event concerns; the identifier
-- itself never appears. The projection (projections/src/audit.rs) derives it from the stream id of
-- `subject` and `contact` streams, else from the subject keys that seal the event's personal
-- fields (`data_keys.subject_ref`; key rows are never deleted, so a replay finds the same). Rows
-- applied before this migration are filled here by that same rule; taking the smallest reference
-- when an event's fields name several subjects.
ALTER TABLE audit_items ADD COLUMN subject_ref text;

UPDATE audit_items a
SET subject_ref = CASE a.aggregate_type
                      WHEN 'subject' THEN a.aggregate_id
                      ELSE substring(a.aggregate_id FROM '[^:]*$')
                  END
WHERE a.aggregate_type = 'subject'
   OR (a.aggregate_type = 'contact' AND strpos(a.aggregate_id, ':') > 0);

UPDATE audit_items a
SET subject_ref = s.subject_ref
FROM (SELECT e.position, MIN(d.subject_ref) AS subject_ref
      FROM events e
               CROSS JOIN LATERAL jsonb_path_query(e.payload::jsonb, 'lax $.** ? (exists (@."$pii")).k[*]') AS k(id)
               JOIN data_keys d ON d.key_id::text = k.id #>> '{}' AND d.kind = 'subject'
      WHERE e.payload::text LIKE '%"$pii"%'
        AND d.subject_ref IS NOT NULL
      GROUP BY e.position) s
WHERE a.position = s.position
  AND a.subject_ref IS NULL;

-- A subject's events in position order; most events concern nobody, so the index skips them.
CREATE INDEX audit_items_subject ON audit_items (subject_ref, position) WHERE subject_ref IS NOT NULL;
