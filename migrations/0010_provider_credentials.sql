-- 0010: provider credentials registered with comms_register_provider (CONTRACT §11.5), only ever
-- stored encrypted: AES-256-GCM under CREDENTIALS_ENCRYPTION_KEY, AAD binding the row to its
-- scope, org, provider, credential name and key version. `org_id` is '' for platform scope.
CREATE TABLE provider_credentials
(
    scope          text        NOT NULL,
    org_id         text        NOT NULL,
    provider       text        NOT NULL,
    credential_key text        NOT NULL,
    key_version    text        NOT NULL,
    iv             text        NOT NULL,
    auth_tag       text        NOT NULL,
    ciphertext     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (scope, org_id, provider, credential_key)
);
