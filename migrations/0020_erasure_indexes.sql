-- 0020: erasure (CONTRACT §11.4) finds a subject's keys and projection rows by its blind index
-- alone when the super-admin erases across every organization; without these it would scan the
-- key, consent and DNC tables. An org-scoped erasure uses the existing (org_id, subject_ref) keys.
CREATE INDEX data_keys_subject_ref ON data_keys (subject_ref) WHERE kind = 'subject';
CREATE INDEX consents_subject_ref ON consents (subject_ref);
CREATE INDEX dnc_entries_subject_ref ON dnc_entries (subject_ref);
