//! The position of what a command appended, handed back to the code that ran it. cqrs-es calls
//! the repository deep inside `execute` and returns `()`, so the repository leaves the position in
//! a task-local slot that `Store::execute` opens around the call. Callers use it to wait until a
//! projection has applied their own events (read-your-writes for tokens and the directory).

use std::cell::Cell;

tokio::task_local! {
    static LAST_POSITION: Cell<Option<i64>>;
}

/// Runs `f` with a fresh slot and returns its output and the highest position appended in it.
pub(crate) async fn capture<F: std::future::Future>(f: F) -> (F::Output, Option<i64>) {
    LAST_POSITION
        .scope(Cell::new(None), async move {
            let out = f.await;
            (out, LAST_POSITION.with(Cell::get))
        })
        .await
}

/// Notes an appended position, if a caller is listening.
pub(crate) fn record(position: i64) {
    let _ = LAST_POSITION.try_with(|slot| slot.set(Some(slot.get().map_or(position, |p| p.max(position)))));
}
