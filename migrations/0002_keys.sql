-- 0002: keys for sealed personal data (CONTRACT §11.4).
--
-- Each key is 32 random bytes stored only wrapped (AES-256-GCM under the KEK). Destroying a key
-- clears `wrapped` and stamps `destroyed_at`; every field sealed under it then reads "[erased]".
-- This table is not the event store: destroying keys is how erasure and retention work.
CREATE TABLE data_keys
(
    key_id          uuid PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('subject', 'retention', 'consent')),
    org_id          text,
    subject_ref     text,
    generation      integer,
    retention_class text,
    bucket          date,
    consent_id      uuid,
    wrapped         bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    destroyed_at    timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
-- One live subject key per (org, subject); after erasure a new generation is made.
CREATE UNIQUE INDEX data_keys_live_subject ON data_keys (org_id, subject_ref)
    WHERE kind = 'subject' AND destroyed_at IS NULL;
CREATE UNIQUE INDEX data_keys_subject_generation ON data_keys (org_id, subject_ref, generation)
    WHERE kind = 'subject';
CREATE UNIQUE INDEX data_keys_retention ON data_keys (retention_class, bucket)
    WHERE kind = 'retention';
CREATE UNIQUE INDEX data_keys_consent ON data_keys (consent_id)
    WHERE kind = 'consent';
