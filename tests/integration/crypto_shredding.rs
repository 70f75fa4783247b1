//! Sealed personal data: never stored in the clear, readable while its keys exist, erased for
//! good when a subject key is destroyed — also in a `pg_dump` of the whole database.

use std::process::Command;
use std::sync::Arc;

use commguard::crypto::DataKeys;
use commguard::store::{envelope::envelope, feed, Store};

use crate::support::ledger::{note, Ledger};
use crate::support::{wait_visible, TestDb};

const PHONE: &str = "+15557654321";
const EMAIL: &str = "alice.erasable@example.com";
const KEPT: &str = "+15550000001";

fn pg_dump(db: &TestDb) -> String {
    let bin = std::env::var("PG_BIN_DIR").map(|d| format!("{d}/pg_dump")).unwrap_or_else(|_| "pg_dump".into());
    let out = Command::new(bin).arg("--dbname").arg(&db.url).output().expect("pg_dump runs");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a plain dump is text")
}

async fn opened_payloads(store: &Store) -> Vec<serde_json::Value> {
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(store.pool()).await.unwrap();
    wait_visible(store.pool(), written).await;
    let mut out = Vec::new();
    for event in feed::read_after(store.pool(), 0, 1000, None).await.unwrap() {
        out.push(serde_json::to_value(envelope(store.keystore(), event, false).await.unwrap()).unwrap());
    }
    out
}

/// Each generation of the subject's keys, and whether it lives.
async fn generations(store: &Store, subject_ref: &str) -> Vec<(i32, bool)> {
    sqlx::query_as("SELECT generation, wrapped IS NOT NULL FROM data_keys WHERE subject_ref = $1 ORDER BY generation")
        .bind(subject_ref)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

async fn migrated_store(db: &TestDb) -> Store {
    let pool = db.pool().await;
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    Store::new(pool, Arc::new(DataKeys::new(&[9u8; 32])))
}

#[tokio::test]
async fn personal_data_is_sealed_and_erasure_destroys_it_everywhere() {
    let db = TestDb::new().await;
    let store = migrated_store(&db).await;
    let ledger = store.framework::<Ledger>(());
    note(&store, &ledger, "l1", "call", Some(PHONE)).await;
    note(&store, &ledger, "l1", "mail", Some(EMAIL)).await;
    note(&store, &ledger, "l2", "other", Some(KEPT)).await;

    // Sealed from the first event: no plaintext anywhere in the database.
    let dump = pg_dump(&db);
    for secret in [PHONE, "5557654321", EMAIL, KEPT, "message for"] {
        assert!(!dump.contains(secret), "the dump holds {secret:?} in the clear");
    }

    // While the keys exist, the feed opens every field.
    let feed = opened_payloads(&store).await;
    assert_eq!(feed[0]["payload"]["contact"], PHONE);
    assert_eq!(feed[0]["payload"]["body"], format!("message for {PHONE}"));
    assert_eq!(feed[1]["payload"]["contact"], EMAIL);
    assert!(feed.iter().all(|e| e["redactions"].as_array().unwrap().is_empty()));
    let raw = envelope(store.keystore(), feed::read_after(store.pool(), 0, 1, None).await.unwrap().remove(0), true)
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&raw).unwrap()["payload"]["contact"]["$pii"], 1, "raw payloads stay sealed");

    // Erasure destroys the subject's key; its fields now read "[erased]", others still open.
    let subject_ref = store.keystore().data_keys().blind_index(PHONE);
    assert_eq!(store.keystore().destroy_subject(Some("org-test"), &subject_ref).await.unwrap(), 1);
    let feed = opened_payloads(&store).await;
    assert_eq!(feed[0]["payload"]["contact"], "[erased]");
    assert_eq!(feed[0]["payload"]["body"], "[erased]");
    let paths: Vec<&str> =
        feed[0]["redactions"].as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["body", "contact"]);
    assert!(feed[0]["redactions"].as_array().unwrap().iter().all(|r| r["reason"] == "subject_erased"));
    assert_eq!(feed[1]["payload"]["contact"], EMAIL);
    assert_eq!(feed[2]["payload"]["contact"], KEPT);

    // The events themselves are untouched (append-only) and their chains still verify.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(store.pool()).await.unwrap();
    assert_eq!(count, 3);
    assert!(commguard::store::verify::verify(store.pool(), None).await.unwrap().is_ok());
    let wrapped: Option<Vec<u8>> = sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE subject_ref = $1")
        .bind(&subject_ref)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(wrapped.is_none(), "the destroyed key is gone, not just flagged");

    // After erasure, no dump holds the subject; a later event uses a new key generation.
    let dump = pg_dump(&db);
    assert!(!dump.contains(PHONE) && !dump.contains("5557654321"));
    note(&store, &ledger, "l1", "again", Some(PHONE)).await;
    let feed = opened_payloads(&store).await;
    assert_eq!(feed[3]["payload"]["contact"], PHONE);
    assert_eq!(feed[0]["payload"]["contact"], "[erased]", "old fields stay erased");
    let generations: Vec<i32> =
        sqlx::query_scalar("SELECT generation FROM data_keys WHERE subject_ref = $1 ORDER BY generation")
            .bind(&subject_ref)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(generations, [1, 2]);
}

#[tokio::test]
async fn a_destroyed_retention_key_erases_the_fields_it_sealed() {
    let db = TestDb::new().await;
    let store = migrated_store(&db).await;
    let ledger = store.framework::<Ledger>(());
    note(&store, &ledger, "r", "msg", Some(PHONE)).await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).date_naive();
    let destroyed =
        store.keystore().destroy_retention(commguard_domain::pii::RetentionClass::Messages, tomorrow).await.unwrap();
    assert_eq!(destroyed, 1);
    let feed = opened_payloads(&store).await;
    assert_eq!(feed[0]["payload"]["contact"], PHONE, "the contact is under the subject key only");
    assert_eq!(feed[0]["payload"]["body"], "[erased]", "the body also needed the messages key of its day");
    assert_eq!(feed[0]["redactions"][0]["path"], "body");
    assert_eq!(feed[0]["redactions"][0]["reason"], "retention_expired");
}

#[tokio::test]
async fn a_key_cached_by_another_instance_is_never_used_after_it_was_destroyed() {
    // Two instances' key stores on one database, with no watcher between them (as if the
    // erasure's notice had not arrived yet): B cached the subject key; A destroys it; B's very
    // next seal uses a new generation, not the destroyed key it still holds in its cache.
    let db = TestDb::new().await;
    let a = migrated_store(&db).await;
    let b = Store::new(db.pool().await, Arc::new(DataKeys::new(&[9u8; 32])));
    let subject_ref = a.keystore().data_keys().blind_index(PHONE);
    let (first, _) = b.keystore().subject_key("org-test", &subject_ref).await.unwrap();
    assert_eq!(b.keystore().subject_key("org-test", &subject_ref).await.unwrap().0, first, "B caches it");
    assert_eq!(a.keystore().destroy_subject(Some("org-test"), &subject_ref).await.unwrap(), 1);
    let (next, _) = b.keystore().subject_key("org-test", &subject_ref).await.unwrap();
    assert_ne!(next, first, "B sealed under the destroyed key");
    assert_eq!(a.keystore().subject_key("org-test", &subject_ref).await.unwrap().0, next, "one live generation");
    assert_eq!(generations(&a, &subject_ref).await, [(1, false), (2, true)]);
}

#[tokio::test]
async fn an_event_sealed_under_a_key_destroyed_meanwhile_is_stored_under_the_next_generation() {
    // B seals with the subject key it cached without asking Postgres; its append checks the key
    // (migration 0029). A destroys it in between, with no watcher to tell B: B's append is refused
    // (CG002), sealed again under a new generation, and stored readable.
    let db = TestDb::new().await;
    let a = migrated_store(&db).await;
    let b = Store::new(db.pool().await, Arc::new(DataKeys::new(&[9u8; 32])));
    let ledger = b.framework::<Ledger>(());
    note(&b, &ledger, "l1", "before", Some(PHONE)).await;
    note(&b, &ledger, "l1", "cached", Some(PHONE)).await;
    let subject_ref = a.keystore().data_keys().blind_index(PHONE);
    assert_eq!(a.keystore().destroy_subject(None, &subject_ref).await.unwrap(), 1);
    note(&b, &ledger, "l1", "after", Some(PHONE)).await;

    let feed = opened_payloads(&a).await;
    let contacts: Vec<&serde_json::Value> = feed.iter().map(|e| &e["payload"]["contact"]).collect();
    assert_eq!(contacts, ["[erased]", "[erased]", PHONE], "the last note was sealed under the destroyed key");
    assert_eq!(generations(&a, &subject_ref).await, [(1, false), (2, true)]);
}

#[tokio::test]
async fn keys_kept_for_opening_never_open_a_field_after_another_instance_destroyed_them() {
    // Opening keeps unwrapped keys and derived field keys across pages (`FieldKeys`), but asks
    // Postgres on every read which keys live. B has opened the subject's fields (twice, so the
    // second read came from what it kept); A destroys the subject key and the retention key of
    // the body, with no watcher between them: B's very next read shows "[erased]" for both.
    let db = TestDb::new().await;
    let a = migrated_store(&db).await;
    let b = Store::new(db.pool().await, Arc::new(DataKeys::new(&[9u8; 32])));
    let ledger = a.framework::<Ledger>(());
    note(&a, &ledger, "l1", "call", Some(PHONE)).await;
    note(&a, &ledger, "l2", "other", Some(KEPT)).await;
    for _ in 0..2 {
        let feed = opened_payloads(&b).await;
        assert_eq!(feed[0]["payload"]["contact"], PHONE);
        assert_eq!(feed[0]["payload"]["body"], format!("message for {PHONE}"));
    }
    // The feed's form of a page (envelopes written as JSON on several threads) is the same.
    let page = feed::read_after(b.pool(), 0, 1000, None).await.unwrap();
    let written = commguard::store::envelope::envelopes_json(b.keystore(), page.clone(), false).await.unwrap();
    let built = commguard::store::envelope::envelopes(b.keystore(), page, false).await.unwrap();
    let written: Vec<serde_json::Value> = written.iter().map(|e| serde_json::from_str(e.get()).unwrap()).collect();
    assert_eq!(written, serde_json::to_value(&built).unwrap().as_array().unwrap().clone());

    let subject_ref = a.keystore().data_keys().blind_index(PHONE);
    assert_eq!(a.keystore().destroy_subject(Some("org-test"), &subject_ref).await.unwrap(), 1);
    let feed = opened_payloads(&b).await;
    assert_eq!(feed[0]["payload"]["contact"], "[erased]");
    assert_eq!(feed[0]["payload"]["body"], "[erased]");
    assert!(feed[0]["redactions"].as_array().unwrap().iter().all(|r| r["reason"] == "subject_erased"));
    assert_eq!(feed[1]["payload"]["contact"], KEPT);
    assert_eq!(feed[1]["payload"]["body"], "message for +15550000001");

    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).date_naive();
    a.keystore().destroy_retention(commguard_domain::pii::RetentionClass::Messages, tomorrow).await.unwrap();
    let feed = opened_payloads(&b).await;
    assert_eq!(feed[1]["payload"]["contact"], KEPT, "under the subject key only");
    assert_eq!(feed[1]["payload"]["body"], "[erased]");
    assert_eq!(feed[1]["redactions"][0]["reason"], "retention_expired");
}
