//! Streams as they stood at an instant (docs/admin-api.md#point-in-time-views-as_of): the events of one aggregate with
//! `occurredAt ≤ as_of`, read through the primary key (aggregate_type, aggregate_id, sequence) —
//! never a scan of history — and folded with the aggregate's own `apply`, so a point-in-time
//! view and the live state agree on what every event means.
//!
//! `occurredAt` is a filter, not a stopping point: events are applied in sequence order, and one
//! stamped after `as_of` is left out even if a later one (another instance's clock, a test clock
//! set back) is stamped before it.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// One event of a stream, as stored (personal fields sealed).
#[derive(Clone, Debug)]
pub struct PastEvent {
    pub sequence: i64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub event_type: String,
    pub payload: Value,
}

impl PastEvent {
    /// The event as its aggregate's event enum (stored payloads are untagged; cqrs-es tags them).
    pub fn decode<A: Aggregate>(&self) -> Result<A::Event, serde_json::Error> {
        let mut tagged = Map::new();
        tagged.insert(self.event_type.clone(), self.payload.clone());
        serde_json::from_value(Value::Object(tagged))
    }
}

/// The events of stream (`aggregate_type`, `aggregate_id`) that occurred at or before `as_of`, in
/// sequence order — by their published `occurredAt` (milliseconds), so an event stored with finer
/// precision (written before `Clock::now` kept milliseconds) is in the view at its own `occurredAt`; with `types`, only events of those types. The names are compile-time constants
/// written into the statement (never bound): a partial index over them (migration 0019) can only
/// serve a query whose predicate the planner sees, and a bound array it does not see.
pub async fn stream_until(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    types: Option<&'static [&'static str]>,
    as_of: DateTime<Utc>,
) -> Result<Vec<PastEvent>, sqlx::Error> {
    let filter = types.map_or(String::new(), |types| format!("AND event_type IN ({})", literals(types)));
    let sql = format!(
        "SELECT sequence, event_id, occurred_at, event_type, payload FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
            AND occurred_at < date_trunc('milliseconds', $3::timestamptz) + interval '1 millisecond' {filter}
          ORDER BY sequence"
    );
    let rows: Vec<(i64, Uuid, DateTime<Utc>, String, Value)> =
        sqlx::query_as(&sql).bind(aggregate_type).bind(aggregate_id).bind(as_of).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(sequence, event_id, occurred_at, event_type, payload)| PastEvent {
            sequence,
            event_id,
            occurred_at,
            event_type,
            payload,
        })
        .collect())
}

/// `'A', 'B'` for event type names (letters only, so nothing needs quoting).
fn literals(types: &[&str]) -> String {
    assert!(
        types.iter().all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphabetic())),
        "event type names are letters only"
    );
    types.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
}

/// The aggregate after `events`, through its own `apply`.
pub fn fold<A: Aggregate>(events: &[PastEvent]) -> Result<A, serde_json::Error> {
    let mut aggregate = A::default();
    for event in events {
        aggregate.apply(event.decode::<A>()?);
    }
    Ok(aggregate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_become_literals() {
        assert_eq!(literals(&["LimitsChanged", "AgentProvisioned"]), "'LimitsChanged', 'AgentProvisioned'");
    }

    #[test]
    fn folding_uses_the_aggregates_apply() {
        use commguard_domain::limits::{LimitSet, Overrides, Tier};
        let overrides = Overrides { per_minute: Some(3), ..Overrides::default() };
        let events = [
            PastEvent {
                sequence: 1,
                event_id: Uuid::nil(),
                occurred_at: Utc::now(),
                event_type: "LimitsChanged".into(),
                payload: serde_json::json!({"overridesBefore": Overrides::default(), "overridesAfter": overrides,
                                            "effective": LimitSet::default()}),
            },
            PastEvent {
                sequence: 2,
                event_id: Uuid::nil(),
                occurred_at: Utc::now(),
                event_type: "BillingConfigChanged".into(),
                payload: serde_json::json!({"tier": "pro", "markupPercent": null, "billingEmail": null,
                                            "tierLimits": LimitSet::default()}),
            },
        ];
        let agent: commguard_domain::agent::Agent = fold(&events).unwrap();
        assert_eq!((agent.tier(), agent.overrides()), (Tier::Pro, overrides));
    }
}
