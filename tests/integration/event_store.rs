//! The event store: global order under concurrency, projections that never skip, a runner that
//! survives being killed, append-only storage, hash chains that expose tampering.

use std::sync::Arc;
use std::time::Duration;

use commguard::crypto::DataKeys;
use commguard::store::{feed, runner, verify, Store};
use commguard_projections::{audit::AuditProjection, Projection, Tables};
use sqlx::PgPool;

use crate::support::ledger::{note, Ledger};
use crate::support::{wait_visible, TestDb};

async fn store(db: &TestDb) -> Store {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(24).connect(&db.url).await.unwrap();
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    Store::new(pool, Arc::new(DataKeys::new(&[7u8; 32])))
}

/// A store holding `n` notes over `streams` streams, all of them visible to readers.
async fn noted(db: &TestDb, n: usize, streams: usize) -> Store {
    let store = store(db).await;
    let ledger = store.framework::<Ledger>(());
    for i in 0..n {
        note(&store, &ledger, &format!("s{}", i % streams), "x", None).await;
    }
    wait_visible(store.pool(), n as i64).await;
    store
}

/// Runs the audit projection until it has applied everything below the horizon.
async fn catch_up(pool: &PgPool) -> usize {
    let projection = AuditProjection;
    let tables = Tables::live(projection.tables());
    let mut total = 0;
    loop {
        let n = runner::run_batch(pool, &projection, projection.name(), &tables, runner::BATCH).await.unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_projected_exactly_once_in_order_across_a_runner_crash() {
    const WRITERS: usize = 8;
    const EVENTS_EACH: usize = 2_000;
    let db = TestDb::new().await;
    let store = store(&db).await;

    // The runner works while the writers write; it is killed midway and started again. Like a
    // separate process, it has its own connections, and they die with it.
    let url = db.url.clone();
    let start_runner = move || {
        let url = url.clone();
        async move {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
            let task = {
                let pool = pool.clone();
                tokio::spawn(async move {
                    loop {
                        catch_up(&pool).await;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            };
            (task, pool)
        }
    };
    let (first_runner, first_pool) = start_runner().await;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let ledger = store.framework::<Ledger>(());
            for i in 0..EVENTS_EACH {
                // Mostly the writer's own streams (50 events each), sometimes one of a few streams
                // every writer shares, so appends to one aggregate race and are retried.
                let id = if i % 8 == 0 { format!("hot-{}", i / 400) } else { format!("writer-{w}-{}", i / 50) };
                note(&store, &ledger, &id, &format!("{w}/{i}"), None).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    first_runner.abort(); // a crash: its open batch, if any, rolls back with its connections
    let _ = first_runner.await;
    first_pool.close().await;
    let mid: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_items").fetch_one(store.pool()).await.unwrap();
    let (second_runner, _second_pool) = start_runner().await;

    for writer in writers {
        writer.await.unwrap();
    }
    // Let the restarted runner finish on its own, then check nothing is left.
    let pool = store.pool().clone();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (events, projected): (i64, i64) =
                sqlx::query_as("SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM audit_items)")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if events == projected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the restarted runner catches up");
    second_runner.abort();

    let total = (WRITERS * EVENTS_EACH) as i64;
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&pool).await.unwrap();
    assert_eq!(events, total);
    assert!(mid > 0 && mid < total, "the runner was killed midway (had projected {mid} of {total})");

    // Exactly once: the same positions, one row per event.
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events e FULL JOIN audit_items a ON a.position = e.position
         WHERE a.position IS NULL OR e.position IS NULL
            OR a.aggregate_id <> e.aggregate_id OR a.sequence <> e.sequence",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(mismatched, 0, "every event projected exactly once");

    // Per-aggregate order: along the global order, each stream's sequence rises by one.
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (
             SELECT sequence - LAG(sequence, 1, 0::bigint) OVER (PARTITION BY aggregate_id ORDER BY position) AS step
             FROM audit_items) s WHERE step <> 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(out_of_order, 0, "streams keep their order in the global order");

    let report = verify::verify(&pool, None).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.broken);
    assert_eq!(report.events, total as u64);
    let streams: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain_heads").fetch_one(&pool).await.unwrap();
    assert_eq!(report.aggregates, streams as u64);
}

#[tokio::test]
async fn readers_never_pass_a_transaction_still_in_flight() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let ledger = store.framework::<Ledger>(());
    note(&store, &ledger, "a", "first", None).await;
    wait_visible(store.pool(), 1).await;
    let seen = feed::read_after(store.pool(), 0, 100, None).await.unwrap();
    assert_eq!(seen.len(), 1);

    // A writer takes its transaction id, then stalls before committing.
    let mut slow = store.pool().begin().await.unwrap();
    let slow_xid: i64 =
        sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint").fetch_one(&mut *slow).await.unwrap();

    // A later writer commits meanwhile: its event exists but stays below no reader's horizon.
    note(&store, &ledger, "b", "second", None).await;
    let after = seen[0].position;
    assert!(
        feed::read_after(store.pool(), after, 100, None).await.unwrap().is_empty(),
        "the horizon holds back later commits"
    );

    // The stalled writer appends an event (numbered below the one that committed first) and commits.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                             position, event_id, occurred_at, org_id, prev_hash, hash)
         VALUES ('ledger', 'slow', 1, 'Noted', '1.0', '{}', '{}', (pg_current_xact_id()::text::bigint << 12),
                 gen_random_uuid(), now(), NULL, '', '')",
    )
    .execute(&mut *slow)
    .await
    .unwrap();
    slow.commit().await.unwrap();

    wait_visible(store.pool(), 3).await;
    let next = feed::read_after(store.pool(), after, 100, None).await.unwrap();
    let ids: Vec<&str> = next.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["slow", "b"], "the earlier transaction's event comes first and is not skipped");
    assert_eq!(next[0].position >> 12, slow_xid);
    assert!(next.windows(2).all(|w| w[0].position < w[1].position));
}

#[tokio::test]
async fn the_event_store_refuses_updates_and_deletes() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let ledger = store.framework::<Ledger>(());
    note(&store, &ledger, "x", "kept", None).await;
    for sql in ["UPDATE events SET event_type = 'Changed'", "DELETE FROM events", "TRUNCATE events"] {
        let err = sqlx::query(sql).execute(store.pool()).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(store.pool()).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_tampered_or_truncated_chain_is_reported_at_its_sequence() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let ledger = store.framework::<Ledger>(());
    for i in 0..5 {
        note(&store, &ledger, "chain", &format!("entry {i}"), None).await;
    }
    note(&store, &ledger, "other", "untouched", None).await;
    let report = verify::verify(store.pool(), None).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.broken);
    assert_eq!((report.aggregates, report.events), (2, 6));

    // An administrator with table rights edits history behind the trigger's back.
    let tamper = |sql: &'static str| {
        let pool = store.pool().clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
            sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    tamper(r#"UPDATE events SET payload = '{"n":3,"text":"rewritten","contact":null,"body":null}' WHERE aggregate_id = 'chain' AND sequence = 3"#).await;
    let report = verify::verify(store.pool(), None).await.unwrap();
    assert_eq!(report.broken.len(), 1, "{:?}", report.broken);
    assert_eq!((report.broken[0].aggregate_id.as_str(), report.broken[0].sequence), ("chain", 3));
    assert!(report.broken[0].reason.contains("hash"), "{}", report.broken[0].reason);

    // Only one aggregate is checked when asked.
    let other = verify::verify(store.pool(), Some(("ledger", "other"))).await.unwrap();
    assert!(other.is_ok());
    assert_eq!(other.events, 1);

    // Removing the tail keeps every remaining link valid: the chain head exposes it.
    let db2 = TestDb::new().await;
    let store2 = self::store(&db2).await;
    let ledger2 = store2.framework::<Ledger>(());
    for i in 0..4 {
        note(&store2, &ledger2, "tail", &format!("entry {i}"), None).await;
    }
    let mut tx = store2.pool().begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
    sqlx::query("DELETE FROM events WHERE sequence = 4").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let report = verify::verify(store2.pool(), None).await.unwrap();
    assert_eq!(report.broken.len(), 1, "{:?}", report.broken);
    assert_eq!(report.broken[0].sequence, 4);
    assert!(report.broken[0].reason.contains("missing"), "{}", report.broken[0].reason);
}

#[tokio::test]
async fn a_projection_rebuilt_from_zero_equals_the_live_one() {
    let db = TestDb::new().await;
    let store = noted(&db, 300, 7).await;
    assert_eq!(catch_up(store.pool()).await, 300);
    let before: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT position, aggregate_id, sequence FROM audit_items ORDER BY position")
            .fetch_all(store.pool())
            .await
            .unwrap();

    // Writers keep appending while the rebuild runs; the swap catches up on them.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let ledger = store.framework::<Ledger>(());
            for i in 0..100 {
                note(&store, &ledger, &format!("s{}", i % 7), "during", None).await;
            }
        })
    };
    let mut progress = runner::Progress::quiet();
    runner::rebuild(store.pool(), &AuditProjection, &mut progress).await.unwrap();
    writer.await.unwrap();
    wait_visible(store.pool(), 400).await;
    catch_up(store.pool()).await;

    let after: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT position, aggregate_id, sequence FROM audit_items ORDER BY position")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(after.len(), 400);
    assert_eq!(&after[..300], &before[..], "the rebuilt rows equal the live ones");
    let shadows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_tables WHERE tablename LIKE '%__shadow'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(shadows, 0);
}

/// A rebuild holds every event committed before it began, even one that a transaction still in
/// flight elsewhere keeps above the horizon: it waits for that transaction to end (a replay with
/// the servers stopped has no live runner to apply it afterwards).
#[tokio::test]
async fn a_rebuild_waits_for_events_committed_above_the_horizon() {
    let db = TestDb::new().await;
    let store = noted(&db, 5, 2).await;
    let mut slow = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *slow).await.unwrap();
    note(&store, &store.framework::<Ledger>(()), "late", "committed above the horizon", None).await;
    let rebuild = tokio::spawn({
        let pool = store.pool().clone();
        async move { runner::rebuild(&pool, &AuditProjection, &mut runner::Progress::quiet()).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rebuild.is_finished(), "the rebuild waits for the transaction in flight");
    slow.rollback().await.unwrap();
    assert_eq!(rebuild.await.unwrap().unwrap(), 6);
    let ids: Vec<String> = sqlx::query_scalar("SELECT aggregate_id FROM audit_items ORDER BY position")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(ids.len(), 6);
    assert_eq!(ids.last().map(String::as_str), Some("late"));
}

/// A rebuild swaps its shadows in under the live tables' names, and their indexes and
/// constraints under the names the migrations gave them, however many times it runs: a later
/// migration that names one (as 0027 dropped `audit_items_agent`) still finds it. Migration 0031
/// gives those names back to a database replayed before.
#[tokio::test]
async fn rebuilt_projections_keep_the_names_of_their_indexes_and_constraints() {
    let db = TestDb::new().await;
    let store = noted(&db, 20, 3).await;
    let projections = commguard_projections::all();
    let tables: Vec<&str> = projections.iter().flat_map(|p| p.tables().iter().copied()).collect();
    let schema = || async {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT c.relname::text, i.relname::text, pg_get_indexdef(i.oid)
               FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
              WHERE c.relname = ANY($1)
             UNION ALL
             SELECT c.relname::text, con.conname::text, pg_get_constraintdef(con.oid)
               FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
              WHERE c.relname = ANY($1)
             ORDER BY 1, 2, 3",
        )
        .bind(&tables)
        .fetch_all(store.pool())
        .await
        .unwrap()
    };
    let migrated = schema().await;
    assert!(migrated.iter().any(|(_, name, _)| name == "audit_items_agent"), "{migrated:?}");

    // Two replays as they swapped before migration 0031, which gives such a database its names back.
    for _ in 0..2 {
        for table in &tables {
            sqlx::raw_sql(&format!(
                "CREATE TABLE {table}__shadow (LIKE {table} INCLUDING ALL); DROP TABLE {table};
                 ALTER TABLE {table}__shadow RENAME TO {table}"
            ))
            .execute(store.pool())
            .await
            .unwrap();
        }
    }
    let replayed_before = schema().await;
    assert!(replayed_before.iter().any(|(_, name, _)| name == "audit_items__shadow_pkey1"), "{replayed_before:?}");
    let migration = commguard::store::MIGRATOR.iter().find(|m| m.version == 31).expect("migration 0031");
    sqlx::raw_sql(&migration.sql).execute(store.pool()).await.unwrap();
    assert_eq!(schema().await, migrated, "migration 0031");

    for round in 1..=2 {
        for projection in &projections {
            runner::rebuild(store.pool(), projection.as_ref(), &mut runner::Progress::quiet()).await.unwrap();
        }
        assert_eq!(schema().await, migrated, "after rebuild {round}");
    }
}

#[tokio::test]
async fn long_streams_load_from_correct_snapshots() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let ledger = store.framework::<Ledger>(());
    // The ledger's `apply` asserts each event follows the state it is applied to: a snapshot that
    // double-applied events (cqrs-es 0.5's own snapshot store) fails here.
    for i in 0..250 {
        note(&store, &ledger, "long", &format!("entry {i}"), None).await;
    }
    let (last_sequence, payload): (i64, serde_json::Value) =
        sqlx::query_as("SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = 'long'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(last_sequence, 200, "snapshotted when the stream crossed 200 events");
    assert_eq!(payload["count"], 200, "the snapshot is the state at its sequence");

    // A load starts from the snapshot and applies only what follows it.
    use cqrs_es::EventStore;
    let snapshots = commguard::store::snapshots::SnapshotStore::<Ledger>::new(
        commguard::store::EventRepository::new(
            store.kept().clone(),
            store.keystore().clone(),
            commguard::store::Appended::default(),
        ),
        100,
    );
    let context = snapshots.load_aggregate("long").await.unwrap();
    assert_eq!((context.current_sequence, context.aggregate.count), (250, 250));
    assert_eq!(context.current_snapshot, Some(2));

    // An unreadable snapshot is ignored: the stream replays from its first event.
    sqlx::query("UPDATE snapshots SET payload = '{\"unexpected\": true}' WHERE aggregate_id = 'long'")
        .execute(store.pool())
        .await
        .unwrap();
    note(&store, &ledger, "long", "after a bad snapshot", None).await;
    let context = snapshots.load_aggregate("long").await.unwrap();
    assert_eq!(context.aggregate.count, 251);
}

#[tokio::test]
async fn a_projection_reading_some_event_types_moves_its_checkpoint_past_the_others() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let ledger = store.framework::<Ledger>(());
    for i in 0..50 {
        note(&store, &ledger, &format!("t{}", i % 3), "x", None).await;
    }
    wait_visible(store.pool(), 50).await;
    let last: i64 = sqlx::query_scalar("SELECT MAX(position) FROM events").fetch_one(store.pool()).await.unwrap();

    // The orgs projection reads organization events only: nothing to apply, yet it is not behind.
    let orgs = commguard_projections::directory::OrgsProjection;
    assert!(orgs.event_types().is_some_and(|types| !types.contains(&"Noted")));
    let tables = Tables::live(orgs.tables());
    let applied = runner::run_batch(store.pool(), &orgs, orgs.name(), &tables, runner::BATCH).await.unwrap();
    assert_eq!(applied, 0);
    let checkpoint: i64 = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = 'orgs'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // It moves up to the last event below the horizon, not to the horizon itself.
    assert_eq!(checkpoint, last, "the checkpoint stands on the last event");
    store.await_projection("orgs", last).await.unwrap();
    // Later steps find nothing new and write nothing, however far the horizon moves meanwhile
    // (each write took a transaction id, which moved the horizon, so idle runners used to keep
    // writing their checkpoints forever).
    let written = "SELECT position, updated_at FROM projection_checkpoints WHERE projection = 'orgs'";
    let before: (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(written).fetch_one(store.pool()).await.unwrap();
    for _ in 0..3 {
        sqlx::query("SELECT pg_current_xact_id()").execute(store.pool()).await.unwrap();
        let applied = runner::run_batch(store.pool(), &orgs, orgs.name(), &tables, runner::BATCH).await.unwrap();
        assert_eq!(applied, 0);
    }
    let after: (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(written).fetch_one(store.pool()).await.unwrap();
    assert_eq!(after, before, "an idle step leaves the checkpoint row untouched");
}

/// Audit events of every shape the view reads: agent and other streams, subject and contact
/// streams, refusals in the payload or only in the provenance, fields of the wrong shape, no org,
/// and text COPY would have to escape.
fn audit_events(n: i64) -> Vec<feed::StoredEvent> {
    use commguard_projections::RawJson;
    let shapes = [
        ("agent", "a-1", "MessageSent", r#"{"to":"x"}"#, r#"{"actor":{"kind":"agent","id":"a-1"}}"#, Some("org-1")),
        (
            "org",
            "org-1",
            "ActionRefused",
            r#"{"agentId":"a-2","refusedBy":"limits","code":"rate_limited","rule":"per_minute"}"#,
            r#"{"actor":{"kind":"org","id":"org-1"},"provenance":{"checks":[],"refusedBy":"ignored"}}"#,
            Some("org-1"),
        ),
        ("agent", "a-3", "MessageBlocked", "{}", r#"{"provenance":{"checks":[],"refusedBy":"dnc"}}"#, None),
        ("subject", "ref\twith\\tab", "SubjectErased", r#"{"agentId":{"not":"a string"}}"#, "{}", None),
        (
            "contact",
            "org-1:ref-2",
            "ConsentGranted",
            r#"{"code":"é\n✓"}"#,
            r#"{"actor":"not an object"}"#,
            Some("o\rg"),
        ),
    ];
    (1..=n)
        .map(|i| {
            let (aggregate_type, id, event_type, payload, metadata, org) = shapes[(i % 5) as usize];
            feed::StoredEvent {
                position: i << 12,
                event_id: uuid::Uuid::new_v4(),
                aggregate_type: aggregate_type.into(),
                aggregate_id: format!("{id}-{}", i % 5),
                sequence: (i - 1) / 5 + 1,
                event_type: event_type.into(),
                event_version: "1.0".into(),
                occurred_at: chrono::DateTime::from_timestamp_micros(1_765_000_000_123_456 + i).unwrap(),
                org_id: org.map(str::to_owned),
                payload: RawJson(payload.into()),
                metadata: RawJson(metadata.into()),
                prev_hash: String::new(),
                hash: String::new(),
            }
        })
        .collect()
}

const AUDIT_ROW: &str = "SELECT position, occurred_at, aggregate_type, aggregate_id, sequence, event_type, outcome,
    actor_kind, actor_id, agent_id, org_id, refused_by, code, rule, subject_ref FROM";

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct AuditRow {
    position: i64,
    occurred_at: chrono::DateTime<chrono::Utc>,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    outcome: String,
    actor_kind: Option<String>,
    actor_id: Option<String>,
    agent_id: Option<String>,
    org_id: Option<String>,
    refused_by: Option<String>,
    code: Option<String>,
    rule: Option<String>,
    subject_ref: Option<String>,
}

#[tokio::test]
async fn the_audit_view_writes_the_same_rows_by_copy_and_by_insert_and_refuses_a_stream_out_of_order() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    let projection = AuditProjection;
    let events = audit_events(100);

    // One batch of 100 goes by COPY (binary); batches of 10 by INSERT, into the shadow tables.
    let live = Tables::live(projection.tables());
    let mut tx = pool.begin().await.unwrap();
    projection.apply(&mut tx, &live, &events).await.unwrap();
    tx.commit().await.unwrap();
    for table in projection.tables() {
        sqlx::query(&format!("CREATE TABLE {table}__shadow (LIKE {table} INCLUDING ALL)"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let shadow = Tables::shadow(projection.tables());
    for batch in events.chunks(10) {
        let mut tx = pool.begin().await.unwrap();
        projection.apply(&mut tx, &shadow, batch).await.unwrap();
        tx.commit().await.unwrap();
    }
    let by_copy: Vec<AuditRow> =
        sqlx::query_as(&format!("{AUDIT_ROW} audit_items ORDER BY position")).fetch_all(&pool).await.unwrap();
    let by_insert: Vec<AuditRow> =
        sqlx::query_as(&format!("{AUDIT_ROW} audit_items__shadow ORDER BY position")).fetch_all(&pool).await.unwrap();
    assert_eq!(by_copy.len(), 100);
    assert_eq!(by_copy, by_insert);
    let refused = by_copy.iter().find(|r| r.event_type == "ActionRefused").unwrap();
    assert_eq!(
        (
            refused.outcome.as_str(),
            refused.agent_id.as_deref(),
            refused.refused_by.as_deref(),
            refused.code.as_deref(),
            refused.rule.as_deref()
        ),
        ("refused", Some("a-2"), Some("limits"), Some("rate_limited"), Some("per_minute"))
    );
    let subject = by_copy.iter().find(|r| r.aggregate_type == "subject").unwrap();
    assert_eq!((subject.aggregate_id.as_str(), subject.agent_id.as_deref()), ("ref\twith\\tab-3", None));
    assert_eq!(subject.subject_ref.as_deref(), Some("ref\twith\\tab-3"));
    let contact = by_copy.iter().find(|r| r.aggregate_type == "contact").unwrap();
    assert_eq!(
        (
            contact.actor_kind.as_deref(),
            contact.org_id.as_deref(),
            contact.code.as_deref(),
            contact.subject_ref.as_deref()
        ),
        (None, Some("o\rg"), Some("é\n✓"), Some("ref-2-4"))
    );
    let blocked = by_copy.iter().find(|r| r.event_type == "MessageBlocked").unwrap();
    assert_eq!((blocked.agent_id.as_deref(), blocked.refused_by.as_deref()), (Some("a-3-2"), Some("dnc")));
    assert_eq!(by_copy[0].occurred_at, events[0].occurred_at);

    // A batch whose stream does not continue its stored head fails, and writes nothing.
    let heads: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT * FROM audit_stream_heads ORDER BY 1, 2").fetch_all(&pool).await.unwrap();
    // Events 101-105: one per stream, each at sequence 21, after the heads at 20, each changed in
    // one way: one skips 21, one starts its stream again at 1, one is a stream never seen that
    // starts above 1.
    type Change = (fn(&mut feed::StoredEvent), &'static str);
    let changes: [Change; 3] = [
        (|e| e.sequence = 22, "org/org-1-1 sequence 22 after 20"),
        (|e| e.sequence = 1, "sequence 1 after 20"),
        (|e| e.aggregate_id = "never-seen".into(), "/never-seen sequence 21 after 0"),
    ];
    for (n, (change, refusal)) in changes.into_iter().enumerate() {
        let mut batch = audit_events(105)[100..].to_vec();
        change(&mut batch[n]);
        let mut tx = pool.begin().await.unwrap();
        let err = projection.apply(&mut tx, &live, &batch).await.unwrap_err().to_string();
        drop(tx);
        assert!(err.ends_with(refusal), "{err}");
    }
    let after: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT * FROM audit_stream_heads ORDER BY 1, 2").fetch_all(&pool).await.unwrap();
    assert_eq!(after, heads);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_items").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 100);
}

/// A test projection that writes the position of every event of its types.
struct Probe {
    name: &'static str,
    tables: &'static [&'static str],
    types: Option<&'static [&'static str]>,
}

impl Projection for Probe {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tables(&self) -> &'static [&'static str] {
        self.tables
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        self.types
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        tables: &'a Tables,
        events: &'a [feed::StoredEvent],
    ) -> commguard_projections::BoxFuture<'a, Result<(), commguard_projections::ProjectionError>> {
        Box::pin(async move {
            let positions: Vec<i64> = events
                .iter()
                .filter(|e| self.types.is_none_or(|t| t.contains(&e.event_type.as_str())))
                .map(|e| e.position)
                .collect();
            let sql = format!("INSERT INTO {} SELECT unnest($1::bigint[])", tables.get(self.tables[0]));
            sqlx::query(&sql).bind(positions).execute(conn).await?;
            Ok(())
        })
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Beat {
    Ping { n: usize },
    Pong { n: usize },
}

impl cqrs_es::DomainEvent for Beat {
    fn event_type(&self) -> String {
        match self {
            Self::Ping { .. } => "TestPing".into(),
            Self::Pong { .. } => "TestPong".into(),
        }
    }

    fn event_version(&self) -> String {
        "1.0".into()
    }
}

/// The live runners of one instance share one read of the feed's tail (`store::tail`). Three
/// probes — one reading every event, two reading one type each — follow eight writers that append
/// two event types at once (commits land out of position order, appends to shared streams are
/// retried), many times more events than the tail keeps; each probe applies exactly the events of
/// its types, each once, whatever the others read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_runners_sharing_the_feeds_tail_apply_every_event_of_their_types_once() {
    const WRITERS: usize = 8;
    const EACH: usize = 1_000;
    let db = TestDb::new().await;
    let store = store(&db).await;
    for table in ["probe_all", "probe_ping", "probe_pong"] {
        sqlx::query(&format!("CREATE TABLE {table} (position bigint PRIMARY KEY)"))
            .execute(store.pool())
            .await
            .unwrap();
    }
    let probes: Vec<Box<dyn Projection>> = vec![
        Box::new(Probe { name: "probe_all", tables: &["probe_all"], types: None }),
        Box::new(Probe { name: "probe_ping", tables: &["probe_ping"], types: Some(&["TestPing"]) }),
        Box::new(Probe { name: "probe_pong", tables: &["probe_pong"], types: Some(&["TestPong"]) }),
    ];
    let stop = Arc::new(tokio::sync::Notify::new());
    let runners = runner::spawn_all(store.kept().clone(), probes, store.appended(), stop.clone());

    let context =
        commguard::store::CommandContext::new(commguard::store::Actor::system("test"), "test", chrono::Utc::now());
    let writers = (0..WRITERS).map(|w| {
        let (store, context) = (store.clone(), context.clone());
        tokio::spawn(async move {
            for i in 0..EACH {
                let beat = if (w + i) % 3 == 0 { Beat::Pong { n: i } } else { Beat::Ping { n: i } };
                let stream = if i % 5 == 0 { format!("shared-{}", i % 3) } else { format!("w{w}-{}", i / 100) };
                store.record("beat", &stream, &[beat], &context).await.unwrap();
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }

    let pool = store.pool().clone();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    let total = (WRITERS * EACH) as i64;
    tokio::time::timeout(Duration::from_secs(60), async {
        while count("SELECT (SELECT COUNT(*) FROM probe_all) + (SELECT COUNT(*) FROM probe_ping) + (SELECT COUNT(*) FROM probe_pong)").await
            < 2 * total
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the probes catch up");
    stop.notify_waiters();
    for runner in runners {
        runner.abort();
    }

    // Exactly the events of each probe's types: no position missing, none extra (a duplicate
    // would have failed the probe's primary key and stalled it).
    for (table, filter) in
        [("probe_all", "TRUE"), ("probe_ping", "event_type = 'TestPing'"), ("probe_pong", "event_type = 'TestPong'")]
    {
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT position FROM events WHERE {filter}) e
               FULL JOIN {table} p USING (position) WHERE e.position IS NULL OR p.position IS NULL"
        );
        let differing: i64 = sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap();
        assert_eq!(differing, 0, "{table} holds exactly the events of its types");
    }
    assert_eq!(count("SELECT COUNT(*) FROM probe_all").await, total);
}
