//! `store::kept`: the hot path's connections, kept between statements, last used first.

use std::time::Duration;

use commguard::store::kept::KeptPool;
use sqlx::PgPool;

use crate::support::TestDb;

async fn backend_of(kept: &KeptPool) -> i32 {
    let mut conn = kept.take().await.unwrap();
    let pid = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(conn.conn()).await;
    conn.ended(&pid);
    pid.unwrap()
}

#[tokio::test]
async fn one_statement_after_another_runs_on_one_backend_which_goes_back_to_the_pool_after_a_lull() {
    let db = TestDb::new().await;
    let pool: PgPool = db.pool().await;
    // Three connections in the pool's idle queue, each used once: the pool alone would hand them out in turn.
    let warm: Vec<_> = futures::future::join_all((0..3).map(|_| pool.acquire())).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kept = KeptPool::new(pool.clone());
    let first = backend_of(&kept).await;
    for _ in 0..20 {
        assert_eq!(backend_of(&kept).await, first, "the connection used last serves the next statement");
    }
    // Unused for longer than it may be kept (250 ms, seen by a task that looks every 250 ms), it
    // goes back to the pool, which then holds all three idle again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.num_idle() < 3 {
        assert!(std::time::Instant::now() < deadline, "the kept connection never went back to the pool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.size(), 3);
}

#[tokio::test]
async fn a_statement_cut_off_mid_way_leaves_no_connection_kept() {
    let db = TestDb::new().await;
    let kept = KeptPool::new(db.pool().await);
    let first = backend_of(&kept).await;
    {
        let mut conn = kept.take().await.unwrap();
        let sleeping = sqlx::query("SELECT pg_sleep(2)").execute(conn.conn());
        assert!(tokio::time::timeout(Duration::from_millis(100), sleeping).await.is_err(), "cut off");
    }
    let next = backend_of(&kept).await;
    assert_ne!(next, first, "the connection whose statement never ended is not handed out again");
}

#[tokio::test]
async fn a_connection_kept_from_before_the_database_failed_a_call_is_not_used_again() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let kept = KeptPool::new(pool.clone());
    let first = backend_of(&kept).await;
    // Its backend goes away while it is kept, as in a database restart; a call elsewhere notices.
    let killed: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&pool).await.unwrap();
    assert!(killed);
    commguard::outage::DATABASE.failed("test", &"the database went away");
    let mut conn = kept.take().await.unwrap();
    let pid: Result<i32, _> = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(conn.conn()).await;
    let pid = pid.expect("the next statement runs on a live connection, not the one kept before the failure");
    assert_ne!(pid, first);
    commguard::outage::DATABASE.succeeded();
}
