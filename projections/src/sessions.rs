//! MCP sessions (docs/cli.md `replay --projection sessions`): one row per `SessionOpened` on a
//! principal's stream (`principal/<kind>:<id>`), closed by its `SessionClosed`. A batch is
//! written with two set-based statements: the openings, then the closings (a session opened and
//! closed in one batch is inserted, then closed).

use serde::Deserialize;
use sqlx::PgConnection;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub struct SessionsProjection;

const SESSION_EVENTS: &[&str] = &["SessionOpened", "SessionClosed"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Opened {
    session_id: String,
    transport: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Closed {
    session_id: String,
    reason: String,
}

impl Projection for SessionsProjection {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["mcp_sessions"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(SESSION_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let table = tables.get("mcp_sessions");
            let (mut ids, mut principals, mut orgs, mut transports, mut opened) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut closed_ids, mut closed_at, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
            for event in events.iter().filter(|e| e.aggregate_type == "principal") {
                match event.event_type.as_str() {
                    "SessionOpened" => {
                        let Ok(o) = event.payload.parse::<Opened>() else { continue };
                        ids.push(o.session_id);
                        principals.push(event.aggregate_id.clone());
                        orgs.push(event.org_id.clone());
                        transports.push(o.transport);
                        opened.push(event.occurred_at);
                    }
                    "SessionClosed" => {
                        let Ok(c) = event.payload.parse::<Closed>() else { continue };
                        closed_ids.push(c.session_id);
                        closed_at.push(event.occurred_at);
                        reasons.push(c.reason);
                    }
                    _ => {}
                }
            }
            if !ids.is_empty() {
                sqlx::query(&format!(
                    "INSERT INTO {table} (session_id, principal, org_id, transport, opened_at)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                     ON CONFLICT (session_id) DO NOTHING"
                ))
                .bind(&ids)
                .bind(&principals)
                .bind(&orgs)
                .bind(&transports)
                .bind(&opened)
                .execute(&mut *conn)
                .await?;
            }
            if !closed_ids.is_empty() {
                // The first close of a session counts; a later one changes nothing.
                sqlx::query(&format!(
                    "UPDATE {table} AS s SET closed_at = c.at, close_reason = c.reason
                     FROM (SELECT DISTINCT ON (id) id, at, reason
                           FROM UNNEST($1::text[], $2::timestamptz[], $3::text[]) WITH ORDINALITY AS u(id, at, reason, n)
                           ORDER BY id, n) c
                     WHERE s.session_id = c.id AND s.closed_at IS NULL"
                ))
                .bind(&closed_ids)
                .bind(&closed_at)
                .bind(&reasons)
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        })
    }
}
