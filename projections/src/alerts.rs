//! Alerts (docs/monitoring.md#alerts, docs/monitoring.md): one row per `AlertRaised`, with the org of the
//! agent it is about (none for IP alerts) and how many alerts its rule raised on its subject so
//! far. Alerts are rare: each is written with its own statement, in order, so a batch holding two
//! alerts on one subject counts both.

pub mod read;

use serde::Deserialize;
use sqlx::PgConnection;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub struct AlertsProjection;

const ALERT_EVENTS: &[&str] = &["AlertRaised"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raised {
    alert_id: String,
    rule: String,
    severity: String,
    title: String,
    message: String,
    subject_kind: String,
    subject_id: String,
}

impl Projection for AlertsProjection {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["alerts"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(ALERT_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let table = tables.get("alerts");
            let sql = format!(
                "INSERT INTO {table} (position, alert_id, rule, severity, title, message, subject_kind, subject_id,
                                      org_id, raised_at, occurrences)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                        1 + (SELECT count(*) FROM {table} WHERE rule = $3 AND subject_kind = $7 AND subject_id = $8)
                 ON CONFLICT (position) DO NOTHING"
            );
            for event in events.iter().filter(|e| ALERT_EVENTS.contains(&e.event_type.as_str())) {
                let Ok(raised) = event.payload.parse::<Raised>() else { continue };
                sqlx::query(&sql)
                    .bind(event.position)
                    .bind(&raised.alert_id)
                    .bind(&raised.rule)
                    .bind(&raised.severity)
                    .bind(&raised.title)
                    .bind(&raised.message)
                    .bind(&raised.subject_kind)
                    .bind(&raised.subject_id)
                    .bind(event.org_id.as_deref().filter(|_| raised.subject_kind != "ip"))
                    .bind(event.occurred_at)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }
}
