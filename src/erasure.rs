//! GDPR erasure by crypto-shredding (docs/tools.md#comms_erase_subject, docs/privacy.md#keys-and-crypto-shredding, docs/admin-api.md
//! `POST /admin/api/subjects/erase`): one operation behind the tool and the admin route.
//!
//! The event store is append-only, so erasing a subject means destroying its keys: every
//! generation of its subject key in scope and the consent-record keys of its grants. Projection
//! rows that hold the subject's data (consent records, per-recipient contact-frequency counters)
//! are purged in the same transaction; DNC entries stay as hashed suppression (the blind index
//! still blocks, the address reads `[erased]`). No instance seals with a destroyed key after the
//! reply: a cached subject key is checked live in Postgres before what it seals is stored (`store::keystore`), and the
//! identity channel's notice only frees the caches' memory. `SubjectErased` is recorded on stream
//! `subject`/<subjectRef> without the identifier. The cost grows with the subject's keys and
//! rows, never with history: every statement is an index lookup by org and blind index
//! (migration 0020; `scripts/bench.sh erase` shows the plans).

use commguard_domain::records::SubjectEvent;
use commguard_projections::directory::IDENTITY_CHANNEL;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::contacts::{self, Address};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::keystore::KeyStore;
use crate::store::{rfc3339, CommandContext};
use crate::validate::{self, invalid, Args, MAX_STRING};

/// The identifier of `args` (`identifier`, `identifierType?`), normalised.
fn identifier(args: &Args<'_>) -> Result<Address, ApiError> {
    let raw = args.str("identifier", 1, 320)?;
    match args.opt_str("identifierType", 16)?.as_deref() {
        None => contacts::address("identifier", &raw),
        Some("phone") => Ok(Address { value: validate::phone("identifier", &raw)?, kind: "phone" }),
        Some("email") => Ok(Address { value: validate::email("identifier", &raw)?, kind: "email" }),
        Some(_) => Err(invalid("identifierType", "must be phone or email")),
    }
}

/// `comms_erase_subject` / `POST /admin/api/subjects/erase`: `{identifier, identifierType?,
/// orgId?, reason?}`. An org admin erases in its own org; the super-admin in `orgId`, or in every
/// org without it. Idempotent: a second call destroys nothing and purges nothing.
pub async fn erase_subject(
    app: &AppState,
    principal: &Principal,
    context: CommandContext,
    args: &Args<'_>,
) -> Result<Value, ApiError> {
    let address = identifier(args)?;
    let reason = args.opt_str("reason", MAX_STRING)?;
    let requested = args.opt_id("orgId")?;
    let mut context = context;
    context.provenance.pass("input");
    // None: every org (the super-admin without orgId).
    let org = if principal.role() == Role::SuperAdmin && requested.is_none() {
        None
    } else {
        let org = crate::directory::commands::home_org(principal, requested)?;
        if crate::directory::org(&app.pool, &org).await?.is_none() {
            return Err(ApiError::not_found(format!("Organization \"{org}\" not found")));
        }
        Some(org)
    };
    context.provenance.pass("org_boundary");
    let keys = app.store.keystore();
    let subject_ref = keys.data_keys().blind_index(&address.value);
    let pool = &app.pool;

    // The orgs in scope: the named one, or every org that holds anything about the subject.
    let org_ids: Vec<String> = match &org {
        Some(org) => vec![org.clone()],
        None => sqlx::query_scalar(
            "SELECT org_id FROM data_keys WHERE kind = 'subject' AND subject_ref = $1
             UNION SELECT org_id FROM consents WHERE subject_ref = $1
             UNION SELECT org_id FROM dnc_entries WHERE subject_ref = $1
             ORDER BY 1",
        )
        .bind(&subject_ref)
        .fetch_all(pool)
        .await
        .map_err(ApiError::internal)?,
    };

    // The subject's grants: every ConsentGranted on its contact streams, and the consent rows.
    let streams: Vec<String> = org_ids.iter().map(|o| format!("{o}:{subject_ref}")).collect();
    let consent_ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT (payload::jsonb ->> 'consentId')::uuid FROM events
         WHERE aggregate_type = 'contact' AND aggregate_id = ANY($1) AND event_type = 'ConsentGranted'
         UNION SELECT consent_id FROM consents WHERE org_id = ANY($2) AND subject_ref = $3",
    )
    .bind(&streams)
    .bind(&org_ids)
    .bind(&subject_ref)
    .fetch_all(pool)
    .await
    .map_err(ApiError::internal)?;

    // From here on the erasure runs to its end whoever hangs up: once its transaction commits, its
    // `SubjectErased` must be recorded (a client that went away during the commit's round trip
    // would otherwise leave keys destroyed with no event saying so).
    let (kind, requested_by) = (address.kind, principal.stream_id());
    app.to_the_end(|app| async move {
        // One transaction: the keys are destroyed, the rows purged and every instance notified
        // together (or not at all; a retry is idempotent), with one commit to wait for.
        let keys = app.store.keystore();
        let pool = &app.pool;
        let mut tx = pool.begin().await.map_err(ApiError::internal)?;
        let mut keys_destroyed =
            keys.destroy_subject_in(&mut tx, org.as_deref(), &subject_ref).await.map_err(ApiError::internal)?;
        keys_destroyed += KeyStore::destroy_consents_in(&mut tx, &consent_ids).await.map_err(ApiError::internal)?;

        // Projection rows about the subject: its consent records, its contact-frequency counters
        // (`<agentId>|<subjectRef>`, one per agent and day). DNC entries are kept and counted.
        // Under the consent projection's lock: no live batch interleaves (one that applies a grant
        // after this commits finds its keys destroyed and drops its row), and a rebuild's swap,
        // which holds it too, drops from its shadow what this deletes from the live table.
        let consent = commguard_projections::Projection::name(&commguard_projections::contact::ConsentProjection);
        crate::store::runner::hold_projection_lock(&mut tx, consent).await.map_err(ApiError::internal)?;
        let consents = sqlx::query("DELETE FROM consents WHERE org_id = ANY($1) AND subject_ref = $2")
            .bind(&org_ids)
            .bind(&subject_ref)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?
            .rows_affected();
        let counters = sqlx::query(
            "DELETE FROM usage_counters WHERE scope = 'contact'
               AND key IN (SELECT agent_id || '|' || $2 FROM agents WHERE org_id = ANY($1))",
        )
        .bind(&org_ids)
        .bind(&subject_ref)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
        let dnc_kept: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dnc_entries WHERE org_id = ANY($1) AND subject_ref = $2")
                .bind(&org_ids)
                .bind(&subject_ref)
                .fetch_one(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        // Every instance forgets its cached live subject keys (`identity_watch`) when this commits. The
        // reply does not wait for that: a cached subject key is checked live in Postgres before what
        // it seals is stored (`append_batch`, `KeyStore::subject_key_deferred`), so no instance stores
        // anything under a destroyed one after this commit, whether or not it has seen the notice.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(IDENTITY_CHANNEL)
            .bind(json!({ "subjectErased": subject_ref }).to_string())
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        keys.forget_subject_keys();

        let scope = if org.is_some() { "org" } else { "all" };
        if let Some(org) = &org {
            context = context.in_org(org.clone());
        }
        let event = SubjectEvent::SubjectErased {
            identifier_type: kind.into(),
            scope: scope.into(),
            org_ids: org_ids.clone(),
            keys_destroyed,
            reason,
            requested_by,
        };
        app.store.record("subject", &subject_ref, &[event], &context).await.map_err(ApiError::internal)?;
        Ok(json!({
            "success": true,
            "subjectRef": subject_ref,
            "scope": scope,
            "orgIds": org_ids,
            "keysDestroyed": keys_destroyed,
            "projectionRowsPurged": consents + counters,
            "dncSuppressionsKept": dnc_kept,
            "erasedAt": rfc3339(app.clock.now()),
        }))
    })
    .await
}
