//! What the hot path's batchers share (the send's reads, the reserver, the group committer): a
//! caller that finds nothing under way runs its work alone, on its own task, and only callers
//! that arrive while others are under way queue for the batching task.
//!
//! A hand-over to a batching task costs a lone caller two wake-ups, and the batching task's
//! `yield_now` (which lets the callers a batch just answered queue again) makes tokio wake the
//! other worker thread to look for work: `perf record -e sched:sched_switch` of one session's
//! 1,000 sequential sends (build `72648b9`) counted 782 such wake-ups from `yield_now` and 732
//! more from the worker so woken, 6.66 voluntary context switches of the server per send.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Callers of one batcher between their ask and their answer, queued or running alone.
#[derive(Clone, Default)]
pub(crate) struct UnderWay(Arc<AtomicUsize>);

impl UnderWay {
    /// Counts the caller in until the returned guard drops (its answer, or its future dropped).
    pub fn enter(&self) -> Entered<'_> {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        Entered { count: &self.0, alone: before == 0 }
    }
}

/// One caller under way.
pub(crate) struct Entered<'a> {
    count: &'a AtomicUsize,
    /// Nothing else was under way when it entered: nothing to gather it with.
    pub alone: bool,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The next batch of `jobs`: the first to arrive, then, once the tasks that are ready have run
/// (so that callers the last batch answered can queue again), everything queued, up to `max`.
/// `None` once the queue is closed. As the group committer does (`store::committer`);
/// `BENCH_PG_STATS=1 scripts/bench.sh send`, A/B/A/B, for the reserver: 0.24 → 0.21
/// `reserve_actions` calls per send, 474 / 461 → 420 / 441 µs per send.
pub(crate) async fn next_batch<T>(jobs: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let first = jobs.recv().await?;
    tokio::task::yield_now().await;
    let mut batch = vec![first];
    while batch.len() < max {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_is_alone_only_when_nothing_else_is_under_way_and_leaves_when_dropped() {
        let under_way = UnderWay::default();
        let first = under_way.enter();
        assert!(first.alone);
        let second = under_way.enter();
        assert!(!second.alone, "the first is still under way");
        drop(first);
        assert!(!under_way.enter().alone, "the second is still under way");
        drop(second);
        // A caller whose future was dropped mid-way counts out too: nothing stays under way.
        assert!(under_way.enter().alone);
        let clone = under_way.clone();
        let held = clone.enter();
        assert!(!under_way.enter().alone, "clones count the same callers");
        drop(held);
    }
}
