//! Provider credentials (docs/security.md#organizations, docs/privacy.md#provider-credentials): registered per org or for the platform, stored
//! only encrypted, and resolved per send — the org's own, else the platform's, else the
//! environment's. Values never leave this module except to the provider adapters.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::config::Config;
use crate::crypto::credentials::{decrypt, encrypt, key_version, CredentialAad, EncryptedCredential};
use crate::crypto::Key;
use crate::error::ApiError;

/// Credentials of one provider: `accountSid`/`authToken` (twilio) or `apiKey`/`webhookSecret` (resend).
#[derive(Clone, Default)]
pub struct Credentials(pub HashMap<String, String>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values are secrets.
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Credentials {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The environment's platform credentials for `provider`, if configured.
    pub fn from_env(provider: &str, config: &Config) -> Option<Self> {
        let mut map = HashMap::new();
        match provider {
            "twilio" if config.telephony_configured() => {
                map.insert("accountSid".into(), config.twilio_account_sid.clone()?);
                map.insert("authToken".into(), config.twilio_auth_token.as_ref()?.0.clone());
            }
            "resend" if config.email_configured() => {
                map.insert("apiKey".into(), config.resend_api_key.as_ref()?.0.clone());
            }
            _ => return None,
        }
        Some(Self(map))
    }
}

fn scope_of(org_id: Option<&str>) -> (&'static str, &str) {
    match org_id {
        Some(org) => ("org", org),
        None => ("platform", ""),
    }
}

/// Whether a real telephony and a real email provider can be used, as `comms_ping` and
/// `/health/ready` report them: credentials registered for `org_id` (its own or the platform's;
/// `None`: the platform's) or given in the environment, unless the provider is disabled.
pub async fn providers_configured<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    config: &Config,
    org_id: Option<&str>,
) -> Result<(bool, bool), sqlx::Error> {
    let registered: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT provider FROM provider_credentials
          WHERE scope = 'platform' OR (scope = 'org' AND org_id = $1)",
    )
    .bind(org_id)
    .fetch_all(executor)
    .await?;
    let has = |name: &str| registered.iter().any(|p| p == name);
    Ok((
        config.telephony_configured() || (has("twilio") && !config.provider_twilio_disabled),
        config.email_configured() || (has("resend") && !config.provider_resend_disabled),
    ))
}

/// Stores `credentials` for `provider` in the org's or the platform's scope; returns the key version.
pub async fn store(
    pool: &PgPool,
    key: &Key,
    org_id: Option<&str>,
    provider: &str,
    credentials: &Credentials,
) -> Result<String, ApiError> {
    let (scope, org) = scope_of(org_id);
    let version = key_version(key);
    let mut tx = pool.begin().await.map_err(ApiError::internal)?;
    for (name, value) in &credentials.0 {
        let aad = CredentialAad { scope, org_id: org, provider, credential_key: name, key_version: &version };
        write(&mut tx, &aad, &encrypt(key, &aad, value)).await?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    Ok(version)
}

/// The stored credentials of one scope, decrypted (`None` if none are stored).
async fn load(
    pool: &PgPool,
    keys: &[Key],
    org_id: Option<&str>,
    provider: &str,
) -> Result<Option<Credentials>, ApiError> {
    let (scope, org) = scope_of(org_id);
    let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT credential_key, key_version, iv, auth_tag, ciphertext FROM provider_credentials
         WHERE scope = $1 AND org_id = $2 AND provider = $3",
    )
    .bind(scope)
    .bind(org)
    .bind(provider)
    .fetch_all(pool)
    .await
    .map_err(ApiError::internal)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut map = HashMap::new();
    for (name, version, iv, auth_tag, ciphertext) in rows {
        let key = keys
            .iter()
            .find(|k| key_version(k) == version)
            .ok_or_else(|| ApiError::internal(format!("no key of version {version}")))?;
        let aad = CredentialAad { scope, org_id: org, provider, credential_key: &name, key_version: &version };
        let value =
            decrypt(key, &aad, &EncryptedCredential { iv, auth_tag, ciphertext }).map_err(ApiError::internal)?;
        map.insert(name, value);
    }
    Ok(Some(Credentials(map)))
}

/// The credentials a send of `org_id` uses: the org's, else the platform's, else the environment's.
pub async fn resolve(
    pool: &PgPool,
    keys: &[Key],
    config: &Config,
    org_id: &str,
    provider: &str,
) -> Result<Option<Credentials>, ApiError> {
    if let Some(own) = load(pool, keys, Some(org_id), provider).await? {
        return Ok(Some(own));
    }
    if let Some(platform) = load(pool, keys, None, provider).await? {
        return Ok(Some(platform));
    }
    Ok(Credentials::from_env(provider, config))
}

/// One optional credential (Resend's `webhookSecret`) as the same chain resolves it, key by key:
/// the org's registered set if it holds it, else the platform's registered set, else the
/// environment's `env`. A set registered without it does not hide the next one's.
pub async fn resolve_optional(
    pool: &PgPool,
    keys: &[Key],
    org_id: &str,
    provider: &str,
    name: &str,
    env: Option<&str>,
) -> Result<Option<String>, ApiError> {
    for scope in [Some(org_id), None] {
        if let Some(value) = load(pool, keys, scope, provider).await?.as_ref().and_then(|c| c.get(name)) {
            return Ok(Some(value.to_string()));
        }
    }
    Ok(env.map(str::to_string))
}

/// After a key rotation (`CREDENTIALS_ENCRYPTION_KEY_PREVIOUS` set): every row still under the
/// previous key is decrypted with it and written again under the current one. Returns how many.
pub async fn reencrypt(pool: &PgPool, current: &Key, previous: &Key) -> Result<u64, ApiError> {
    let old_version = key_version(previous);
    let new_version = key_version(current);
    if old_version == new_version {
        return Ok(0);
    }
    type Row = (String, String, String, String, String, String, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT scope, org_id, provider, credential_key, iv, auth_tag, ciphertext FROM provider_credentials WHERE key_version = $1",
    )
    .bind(&old_version)
    .fetch_all(pool)
    .await
    .map_err(ApiError::internal)?;
    let mut tx = pool.begin().await.map_err(ApiError::internal)?;
    for (scope, org, provider, name, iv, auth_tag, ciphertext) in &rows {
        let old = CredentialAad { scope, org_id: org, provider, credential_key: name, key_version: &old_version };
        let value = decrypt(
            previous,
            &old,
            &EncryptedCredential { iv: iv.clone(), auth_tag: auth_tag.clone(), ciphertext: ciphertext.clone() },
        )
        .map_err(ApiError::internal)?;
        let new = CredentialAad { scope, org_id: org, provider, credential_key: name, key_version: &new_version };
        write(&mut tx, &new, &encrypt(current, &new, &value)).await?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    Ok(rows.len() as u64)
}

/// Writes one sealed value under its AAD (insert, or replace the row of the same name).
async fn write(
    conn: &mut sqlx::PgConnection,
    aad: &CredentialAad<'_>,
    sealed: &EncryptedCredential,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO provider_credentials (scope, org_id, provider, credential_key, key_version, iv, auth_tag, ciphertext)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (scope, org_id, provider, credential_key) DO UPDATE SET key_version = EXCLUDED.key_version,
             iv = EXCLUDED.iv, auth_tag = EXCLUDED.auth_tag, ciphertext = EXCLUDED.ciphertext, updated_at = now()",
    )
    .bind(aad.scope)
    .bind(aad.org_id)
    .bind(aad.provider)
    .bind(aad.credential_key)
    .bind(aad.key_version)
    .bind(&sealed.iv)
    .bind(&sealed.auth_tag)
    .bind(&sealed.ciphertext)
    .execute(conn)
    .await
    .map_err(ApiError::internal)?;
    Ok(())
}
