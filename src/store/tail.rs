//! The feed's tail, read once for every live runner of this instance. Each send is read by three
//! runners (audit, usage, anomaly), each in its own transaction a moment after the others: three
//! reads of the same rows, and three decodes. Here the first runner to look past the tail reads
//! on — every type, below its own horizon — and keeps what it read for the others.
//!
//! What the tail holds is final: every event with `from < position <= to`, read below a horizon,
//! where no later commit can add one (`feed`). So a runner may take any part of it whatever its own
//! horizon, and its checkpoint may move to `to` even if that lies above its own horizon's last
//! event. A runner behind the tail (one that lagged further than the tail keeps) reads for itself,
//! as every runner did before.

use std::collections::VecDeque;

use sqlx::PgConnection;
use tokio::sync::Mutex;

use super::feed::{self, StoredEvent};

/// Events kept (the oldest go first): the three runners read a gathering pause's batch within
/// milliseconds of each other (`runner::GATHER`: about 300 events at 3,000 sends a second), and
/// a send's event is about 3 KB, so this holds at most about 3 MB.
const KEPT: usize = 1_024;

/// The horizon a runner read beside its lock, and the last event below it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Below {
    pub horizon: i64,
    pub last_event: i64,
}

#[derive(Default)]
pub(crate) struct Tail {
    /// Held across the read, so that runners that wake together read once.
    window: Mutex<Window>,
}

/// Every event with `from < position <= to`, in order.
#[derive(Default)]
struct Window {
    from: i64,
    to: i64,
    events: VecDeque<StoredEvent>,
}

impl Window {
    fn keep(&mut self, read: Vec<StoredEvent>, to: i64) {
        self.events.extend(read);
        self.to = to;
        while self.events.len() > KEPT {
            let oldest = self.events.pop_front().expect("more than KEPT events");
            self.from = oldest.position;
        }
    }
}

impl Tail {
    /// Up to `limit` events after `after` (of `types`, or every one), below `below`; and how far
    /// the read reached: every event up to there that is not returned is of another type (as
    /// `feed::read_types_after`). It reached `below.last_event` (or further, from the tail) unless
    /// it returned `limit` events or the one read it made ended at `limit` rows: then there is
    /// more below the horizon, and the caller should read on at once.
    pub async fn read(
        &self,
        conn: &mut PgConnection,
        after: i64,
        below: Below,
        limit: i64,
        types: Option<&[&str]>,
    ) -> Result<(Vec<StoredEvent>, i64), sqlx::Error> {
        let limit_n = usize::try_from(limit).unwrap_or(0).max(1);
        let wanted = |e: &StoredEvent| types.is_none_or(|t| t.contains(&e.event_type.as_str()));
        let mut window = self.window.lock().await;
        if after < window.from {
            drop(window);
            return direct(conn, after, below, limit, types).await;
        }
        let mut out = Vec::new();
        if after < window.to {
            let start = window.events.partition_point(|e| e.position <= after);
            for event in window.events.range(start..).filter(|e| wanted(e)) {
                out.push(event.clone());
                if out.len() == limit_n {
                    return Ok((out, event.position));
                }
            }
        }
        let reached = after.max(window.to);
        if reached >= below.last_event {
            return Ok((out, reached));
        }
        // Read on from here, every type, and keep it for the others.
        let (read, to) = every_type(conn, reached, below, limit).await?;
        let mut stopped = None;
        for event in read.iter().filter(|e| wanted(e)) {
            out.push(event.clone());
            if out.len() == limit_n {
                stopped = Some(event.position);
                break;
            }
        }
        if reached > window.to {
            // Ahead of the tail (this runner's checkpoint moved past it): the tail starts here.
            *window = Window { from: reached, to: reached, events: VecDeque::new() };
        }
        window.keep(read, to);
        Ok((out, stopped.unwrap_or(to)))
    }
}

/// A runner's own read, as before the tail: `feed::read_types_after`, or every type below the
/// horizon.
pub(crate) async fn direct(
    conn: &mut PgConnection,
    after: i64,
    below: Below,
    limit: i64,
    types: Option<&[&str]>,
) -> Result<(Vec<StoredEvent>, i64), sqlx::Error> {
    if let Some(types) = types {
        return feed::read_types_after(conn, after, below.horizon, below.last_event, limit, types).await;
    }
    every_type(conn, after, below, limit).await
}

/// Up to `limit` events after `after` below the horizon, and how far they are complete: to the
/// last one if the read ended at `limit` rows, else to the last event below the horizon.
async fn every_type(
    conn: &mut PgConnection,
    after: i64,
    below: Below,
    limit: i64,
) -> Result<(Vec<StoredEvent>, i64), sqlx::Error> {
    let mut events = Vec::new();
    feed::read_below(conn, after, below.horizon, limit, None, usize::MAX, |chunk| events.extend(chunk)).await?;
    let to = match events.last() {
        Some(last) if events.len() as i64 == limit => last.position,
        _ => after.max(below.last_event),
    };
    Ok((events, to))
}
