-- 0005: the size of each stream's last append, so a group commit can move many chain heads in
-- one statement and still check each against the sequence its append was decided on
-- (`last_sequence - appended` is where the head stood before).
ALTER TABLE chain_heads ADD COLUMN appended bigint NOT NULL DEFAULT 0;
