-- 0023: a call remembers the id of the subject key that seals its recipient (the `to` field of
-- CallPlaced), so that a recording reported later by a status callback is sealed under that very
-- key (and the voicemail retention key): erasing the recipient, before or after the recording
-- arrives, makes the recording reference unreadable (CONTRACT §11.4, §11.6 voicemail).
ALTER TABLE calls ADD COLUMN to_key uuid;

UPDATE calls c
SET to_key = (e.payload::jsonb -> 'to' -> 'k' ->> 0)::uuid
FROM events e
WHERE e.event_type = 'CallPlaced' AND e.aggregate_type = 'agent' AND e.aggregate_id = c.agent_id
  AND (e.payload::jsonb ->> 'callId')::uuid = c.call_id;
