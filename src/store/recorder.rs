//! Group appends for facts (`Store::record`). Facts about one stream — a principal's sessions,
//! an IP's failures — can arrive by the hundred at once; appended one by one they would conflict
//! on the stream's head and retry each other out. Instead each stream has a queue in this
//! process: the first fact to arrive starts a flusher task that appends everything queued in one
//! statement (one round trip, one chain extension), then whatever arrived meanwhile, until the
//! queue is empty. Conflicts with other instances are retried at the new head; facts the store
//! refuses are appended again one caller at a time, so they fail only their own caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use tokio::sync::oneshot;

use super::committer::{self, Alongside, Refused, MAX_EVENTS_PER_APPEND};
use super::context::CommandContext;
use super::repository::{EventRepository, Stamped};
use crate::error::{DatabaseDown, Failure};

/// One fact as cqrs-es serializes it; the recorder numbers it (in place) when it is appended.
pub(crate) struct Fact {
    pub event: SerializedEvent,
    /// The context of the command that produced it (shared by the facts of one `record`).
    pub context: Arc<CommandContext>,
    /// What its append also does: settle an outbound intent, decide a reservation.
    pub alongside: Alongside,
}

struct Pending {
    facts: Vec<Fact>,
    done: oneshot::Sender<Result<Option<i64>, Failed>>,
}

/// A failed append, handed to every waiter of the batch: its text and whether the database was
/// down (so each waiter's caller still answers `unavailable`, not `internal`); or, for one
/// waiter, its refused reservations (nothing of it was stored).
#[derive(Clone)]
enum Failed {
    Append { message: String, down: bool },
    Refused(Vec<committer::RefusedReservation>),
}

impl From<PersistenceError> for Failed {
    fn from(e: PersistenceError) -> Self {
        match committer::refused(&e) {
            Some(refusals) => Self::Refused(refusals.to_vec()),
            None => Self::Append { down: e.database_down(), message: e.to_string() },
        }
    }
}

impl From<Failed> for PersistenceError {
    fn from(f: Failed) -> Self {
        match f {
            Failed::Append { message, down: true } => PersistenceError::UnknownError(Box::new(DatabaseDown(message))),
            Failed::Append { message, down: false } => PersistenceError::UnknownError(message.into()),
            Failed::Refused(refusals) => PersistenceError::UnknownError(Box::new(Refused(refusals))),
        }
    }
}

type StreamKey = (String, String);

/// A stream's queue exists exactly while its one flusher runs.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
}

#[derive(Clone)]
pub(crate) struct Recorder {
    repo: EventRepository,
    queues: Arc<Mutex<HashMap<StreamKey, Queue>>>,
}

/// Retries of one batch against appends by other instances.
const RETRIES: u32 = 64;

impl Recorder {
    pub fn new(repo: EventRepository) -> Self {
        Self { repo, queues: Arc::default() }
    }

    /// Queues `facts` for stream (`aggregate_type`, `aggregate_id`) and waits until they are
    /// stored; returns the position of the batch's last event.
    pub async fn record(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        facts: Vec<Fact>,
    ) -> Result<Option<i64>, PersistenceError> {
        if facts.is_empty() {
            return Ok(None);
        }
        let key = (aggregate_type.to_string(), aggregate_id.to_string());
        let (done, result) = oneshot::channel();
        let start_flusher = {
            let mut queues = self.queues.lock().expect("recorder lock");
            let absent = !queues.contains_key(&key);
            queues.entry(key.clone()).or_default().pending.push(Pending { facts, done });
            absent
        };
        if start_flusher {
            let recorder = self.clone();
            tokio::spawn(async move { recorder.flush(key).await });
        }
        match result.await {
            Ok(Ok(position)) => Ok(position),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(PersistenceError::UnknownError("the recorder stopped before storing the facts".into())),
        }
    }

    /// Appends the queue of one stream until it is empty, then removes it.
    async fn flush(&self, key: StreamKey) {
        loop {
            let batch = {
                let mut queues = self.queues.lock().expect("recorder lock");
                let Some(Queue { pending: queue }) = queues.get_mut(&key) else { return };
                if queue.is_empty() {
                    // Removed under the lock: the next fact finds no queue and starts a flusher.
                    queues.remove(&key);
                    return;
                }
                // Whole pendings only, up to the per-transaction limit (one oversize pending alone).
                let mut taken = 0;
                let mut n = 0;
                for pending in queue.iter() {
                    if n > 0 && taken + pending.facts.len() > MAX_EVENTS_PER_APPEND {
                        break;
                    }
                    taken += pending.facts.len();
                    n += 1;
                }
                queue.drain(..n).collect::<Vec<_>>()
            };
            let Some((batch, outcome)) = self.append_reserved(&key, batch).await else { continue };
            match outcome {
                // One pending's facts Postgres refuses must not cost the others theirs: each is
                // appended on its own (exhausted conflicts and an unreachable database are not
                // that, and fail them all).
                Err(e)
                    if batch.len() > 1 && !matches!(e, PersistenceError::OptimisticLockError) && !e.database_down() =>
                {
                    tracing::warn!(error = %e, pendings = batch.len(), "facts refused together; appending them one by one");
                    for mut pending in batch {
                        let outcome = self.append(&key, std::slice::from_mut(&mut pending)).await;
                        let _ = pending.done.send(outcome.map_err(Failed::from));
                    }
                }
                outcome => {
                    let outcome = outcome.map_err(Failed::from);
                    for pending in batch {
                        let _ = pending.done.send(outcome.clone());
                    }
                }
            }
        }
    }

    /// `append`, until no reservation of `batch` is refused: a pending whose reservation is refused
    /// is answered with its refusal, and the rest are chained again without it. `None` when
    /// every pending was answered so.
    async fn append_reserved(
        &self,
        key: &StreamKey,
        mut batch: Vec<Pending>,
    ) -> Option<(Vec<Pending>, Result<Option<i64>, PersistenceError>)> {
        loop {
            let outcome = self.append(key, &mut batch).await;
            let Some(refusals) = outcome.as_ref().err().and_then(committer::refused) else {
                return Some((batch, outcome));
            };
            let refusals = refusals.to_vec();
            let (refused, rest): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|pending| {
                pending
                    .facts
                    .iter()
                    .any(|f| f.alongside.reserves.as_ref().is_some_and(|r| refusals.iter().any(|x| x.id == r.id)))
            });
            if refused.is_empty() {
                // Refusals of no reservation of this batch: nothing to take out, so nothing to
                // try again either.
                return Some((rest, outcome));
            }
            for pending in refused {
                let own = refusals
                    .iter()
                    .filter(|x| {
                        pending.facts.iter().any(|f| f.alongside.reserves.as_ref().is_some_and(|r| r.id == x.id))
                    })
                    .cloned()
                    .collect();
                let _ = pending.done.send(Err(Failed::Refused(own)));
            }
            if rest.is_empty() {
                return None;
            }
            batch = rest;
        }
    }

    async fn append(
        &self,
        (aggregate_type, aggregate_id): &StreamKey,
        batch: &mut [Pending],
    ) -> Result<Option<i64>, PersistenceError> {
        let mut attempt = 0;
        loop {
            // First try where this process last saw the stream; after a conflict, ask Postgres.
            let head = match self.repo.known_head(aggregate_type, aggregate_id).filter(|_| attempt == 0) {
                Some(head) => head,
                None => self.repo.stream_head(aggregate_type, aggregate_id).await?,
            };
            // Numbered in place: an attempt lends the events to the append instead of copying them.
            for (i, fact) in batch.iter_mut().flat_map(|p| p.facts.iter_mut()).enumerate() {
                fact.event.sequence = head as usize + i + 1;
            }
            let events: Vec<Stamped> = batch
                .iter()
                .flat_map(|p| p.facts.iter())
                .map(|f| Stamped { event: &f.event, context: &f.context, alongside: Some(&f.alongside) })
                .collect();
            match self.repo.append_stamped(&events).await {
                Err(PersistenceError::OptimisticLockError) if attempt < RETRIES => {
                    attempt += 1;
                    let ceiling_us = 200u64 << attempt.min(7);
                    tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % ceiling_us)).await;
                }
                other => return other,
            }
        }
    }
}
