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

use tokio::sync::{mpsc, oneshot};

/// A batcher's side its callers hold: the queue to its batching task(s), and the count of
/// callers under way, which decides whether a job runs alone or is queued.
pub(crate) struct Gather<J> {
    queue: mpsc::UnboundedSender<J>,
    under_way: UnderWay,
}

impl<J> Clone for Gather<J> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone(), under_way: self.under_way.clone() }
    }
}

impl<J> Gather<J> {
    /// A batcher, and the receiving end its batching task(s) take batches from.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<J>) {
        let (queue, jobs) = mpsc::unbounded_channel();
        (Self { queue, under_way: UnderWay::default() }, jobs)
    }

    /// Runs `job` through `alone` (a batch of one, on this task) when nothing else is under way,
    /// else queues it for the batching task; either way answers what `job` sends on the channel
    /// whose receiving end is `answer`. `None` when the batcher stopped before answering.
    pub async fn submit<A>(&self, job: J, answer: oneshot::Receiver<A>, alone: impl AsyncFnOnce(J)) -> Option<A> {
        let entered = self.under_way.enter();
        if entered.alone {
            alone(job).await;
        } else if self.queue.send(job).is_err() {
            return None;
        }
        answer.await.ok()
    }
}

/// Callers of one batcher between their ask and their answer, queued or running alone.
#[derive(Clone, Default)]
struct UnderWay(Arc<AtomicUsize>);

impl UnderWay {
    /// Counts the caller in until the returned guard drops (its answer, or its future dropped).
    fn enter(&self) -> Entered<'_> {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        Entered { count: &self.0, alone: before == 0 }
    }
}

/// One caller under way.
struct Entered<'a> {
    count: &'a AtomicUsize,
    /// Nothing else was under way when it entered: nothing to gather it with.
    alone: bool,
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

    #[tokio::test]
    async fn a_lone_job_runs_on_its_callers_task_and_one_beside_another_is_queued() {
        let (gather, mut jobs) = Gather::<(u32, oneshot::Sender<u32>)>::new();
        let alone = async |(n, reply): (u32, oneshot::Sender<u32>)| {
            let _ = reply.send(n * 10);
        };
        let (reply, answer) = oneshot::channel();
        assert_eq!(gather.submit((1, reply), answer, alone).await, Some(10));
        assert!(jobs.try_recv().is_err(), "nothing was queued");

        // Another caller under way: the job goes to the batching task, which answers it.
        let other = gather.under_way.enter();
        tokio::spawn(async move {
            while let Some((n, reply)) = jobs.recv().await {
                let _ = reply.send(n * 100);
            }
        });
        let (reply, answer) = oneshot::channel();
        assert_eq!(gather.submit((2, reply), answer, alone).await, Some(200));
        drop(other);
    }
}
