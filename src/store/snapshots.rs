//! Our `EventStore`: cqrs-es's persisted store, with snapshots done right.
//!
//! cqrs-es 0.5's snapshot store serializes the aggregate after applying the new events a second
//! time (`handle` has already applied them through the `EventSink`), so its snapshots are wrong
//! for any non-idempotent `apply`. Here the snapshot is the context's aggregate as `handle` left
//! it — exactly the state after the new events. Snapshots are a cache: a load applies every event
//! after the snapshot's sequence, an unreadable snapshot falls back to a full replay, and a failed
//! snapshot write never fails the command whose events are already committed.
//!
//! It also keeps the aggregates it last committed in memory, so the next command on a hot stream
//! skips the snapshot and replay: a cached aggregate is used after one read finds no event past
//! its sequence (another instance may have appended; a command refused or deciding nothing on
//! the stale state would never reach an append to conflict), else it is loaded afresh. Appends
//! are optimistic besides: one that races another writer conflicts on the stream's primary key,
//! the entry is dropped, and the retry loads from Postgres.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};

use super::repository::EventRepository;

/// Aggregates cached per store; past this many the cache starts over (it is only a cache).
const CACHED_AGGREGATES: usize = 10_000;

struct Cached<A> {
    aggregate: A,
    sequence: usize,
    snapshot: Option<usize>,
}

pub struct SnapshotStore<A> {
    repo: EventRepository,
    every: usize,
    cache: Arc<Mutex<HashMap<String, Cached<A>>>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> SnapshotStore<A> {
    /// Snapshots each stream whenever it crosses a multiple of `every` events.
    pub fn new(repo: EventRepository, every: usize) -> Self {
        Self { repo, every: every.max(1), cache: Arc::default(), _aggregate: PhantomData }
    }
}

fn deserialize<A: Aggregate>(events: Vec<SerializedEvent>) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
    events.into_iter().map(|e| EventEnvelope::<A>::try_from(e).map_err(AggregateError::from)).collect()
}

impl<A: Aggregate + Clone> EventStore<A> for SnapshotStore<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(&self, aggregate_id: &str) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        deserialize(self.repo.get_events::<A>(aggregate_id).await?)
    }

    async fn load_aggregate(&self, aggregate_id: &str) -> Result<Self::AC, AggregateError<A::Error>> {
        let cached =
            self.cache.lock().expect("aggregate cache lock").get(aggregate_id).map(|c| EventStoreAggregateContext {
                aggregate_id: aggregate_id.to_string(),
                aggregate: c.aggregate.clone(),
                current_sequence: c.sequence,
                current_snapshot: c.snapshot,
            });
        if let Some(cached) = cached {
            // Used only while nothing was appended after it: a command refused, or deciding
            // nothing, on a state another instance has moved past never reaches the append
            // whose conflict would have shown it (a suspension refused as "already suspended"
            // after another instance lifted it). One read of the stream past the cached sequence.
            if self.repo.get_last_events::<A>(aggregate_id, cached.current_sequence).await?.is_empty() {
                return Ok(cached);
            }
            self.cache.lock().expect("aggregate cache lock").remove(aggregate_id);
        }
        let snapshot = self.repo.get_snapshot::<A>(aggregate_id).await?;
        let mut context = snapshot
            .and_then(|s| {
                let aggregate = serde_json::from_value::<A>(s.aggregate).ok()?;
                Some(EventStoreAggregateContext {
                    aggregate_id: aggregate_id.to_string(),
                    aggregate,
                    current_sequence: s.current_sequence,
                    current_snapshot: Some(s.current_snapshot),
                })
            })
            .unwrap_or_else(|| EventStoreAggregateContext {
                aggregate_id: aggregate_id.to_string(),
                aggregate: A::default(),
                current_sequence: 0,
                current_snapshot: None,
            });
        let events = self.repo.get_last_events::<A>(aggregate_id, context.current_sequence).await?;
        for envelope in deserialize::<A>(events)? {
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let before = context.current_sequence;
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(before + 1..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: context.aggregate_id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let serialized =
            envelopes.iter().map(SerializedEvent::try_from).collect::<Result<Vec<_>, PersistenceError>>()?;
        let after = before + envelopes.len();
        let snapshot = if after / self.every > before / self.every {
            // `handle` applied the new events to this aggregate already: it is the state at `after`.
            serde_json::to_value(&context.aggregate)
                .ok()
                .map(|state| (context.aggregate_id.clone(), state, context.current_snapshot.map_or(1, |s| s + 1)))
        } else {
            None
        };
        let snapshot_number = snapshot.as_ref().map(|s| s.2).or(context.current_snapshot);
        if let Err(e) = self.repo.persist::<A>(&serialized, snapshot).await {
            // Decided on a state someone else has moved past: the retry must load afresh.
            self.cache.lock().expect("aggregate cache lock").remove(&context.aggregate_id);
            return Err(e.into());
        }
        let mut cache = self.cache.lock().expect("aggregate cache lock");
        if cache.len() >= CACHED_AGGREGATES {
            cache.clear();
        }
        let entry = Cached { aggregate: context.aggregate, sequence: after, snapshot: snapshot_number };
        cache.insert(context.aggregate_id, entry);
        Ok(envelopes)
    }
}
