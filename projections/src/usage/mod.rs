//! Usage: actions and provider cost per agent, channel and UTC hour (docs/tools.md#catalogue dashboard and
//! billing). A batch is summed in memory and written with one upsert.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Deserialize;
use sqlx::PgConnection;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub mod read;

pub struct UsageProjection;

/// (agent, hour, channel) → (org, actions, cost).
type Sums = HashMap<(String, DateTime<Utc>, String), (String, i64, i64)>;

#[derive(Deserialize)]
struct Sent {
    channel: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    cost: i64,
}

const USAGE_EVENTS: &[&str] = &["MessageSent", "CallPlaced", "CallStatusChanged"];

/// The dashboard's channel names: sms, email, voice_call, voice_message.
fn channel(event_type: &str, sent: &Sent) -> Option<String> {
    match event_type {
        "MessageSent" => sent.channel.clone(),
        "CallPlaced" | "CallStatusChanged" => {
            Some(if sent.kind.as_deref() == Some("voice_message") { "voice_message" } else { "voice_call" }.into())
        }
        _ => None,
    }
}

impl Projection for UsageProjection {
    fn name(&self) -> &'static str {
        "usage"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["usage_hourly"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(USAGE_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut sums = Sums::new();
            let usage =
                events.iter().filter(|e| e.aggregate_type == "agent" && USAGE_EVENTS.contains(&e.event_type.as_str()));
            for event in usage {
                // A call's status callback brings its final cost (no new action).
                let action = match event.event_type.as_str() {
                    "MessageSent" | "CallPlaced" => 1,
                    "CallStatusChanged" => 0,
                    _ => continue,
                };
                let Ok(sent) = event.payload.parse::<Sent>() else { continue };
                let Some(channel) = channel(&event.event_type, &sent) else { continue };
                let hour = event.occurred_at.duration_trunc(TimeDelta::hours(1)).unwrap_or(event.occurred_at);
                let org = event.org_id.clone().unwrap_or_default();
                let entry = sums.entry((event.aggregate_id.clone(), hour, channel)).or_insert((org, 0, 0));
                entry.1 += action;
                entry.2 += sent.cost;
            }
            if sums.is_empty() {
                return Ok(());
            }
            let (mut agents, mut hours, mut channels, mut orgs, mut actions, mut costs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((agent, hour, channel), (org, n, cost)) in sums {
                agents.push(agent);
                hours.push(hour);
                channels.push(channel);
                orgs.push(org);
                actions.push(n);
                costs.push(cost);
            }
            sqlx::query(&format!(
                "INSERT INTO {} AS u (agent_id, hour, channel, org_id, actions, cost)
                 SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
                 ON CONFLICT (agent_id, hour, channel)
                     DO UPDATE SET actions = u.actions + EXCLUDED.actions, cost = u.cost + EXCLUDED.cost",
                tables.get("usage_hourly")
            ))
            .bind(&agents)
            .bind(&hours)
            .bind(&channels)
            .bind(&orgs)
            .bind(&actions)
            .bind(&costs)
            .execute(conn)
            .await?;
            Ok(())
        })
    }
}
