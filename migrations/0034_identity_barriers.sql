-- 0034: a revocation reaches every instance before it is answered.
--
-- Each instance caches resolved tokens and org modes and drops them when `commguard_identity`
-- tells it (NOTIFY, sent by the directory projections). The instance that revoked answered as soon
-- as its own projections showed the change, while another instance might not yet have read the
-- notification: two instances on one database let a rotated token through on the other one in
-- about 3 of 790 tries, although a revocation "refuses all later requests at once on every
-- instance". Now the revoking command sends a barrier after the change — a number from
-- `identity_barriers` on the same channel, so every listener reads it after the revocation —
-- and answers once every live instance (a heartbeat within the intent lease) has written, in
-- `identity_seen`, that it has read that far.
ALTER TABLE service_instances ADD COLUMN identity_seen bigint NOT NULL DEFAULT 0;
CREATE SEQUENCE identity_barriers;
