//! The one service clock (principle 8, docs/security.md#principles). Every time-based rule reads it; with
//! `COMMGUARD_TEST_CLOCK` tests may set or advance it through `/admin/api/test/clock`.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};

/// An offset applied to the real clock. A set clock keeps running from the instant it was set.
#[derive(Clone, Default)]
pub struct Clock {
    offset: Arc<RwLock<Option<Duration>>>,
}

impl Clock {
    /// Now, to the millisecond: the precision every instant is published with (RFC 3339 with
    /// milliseconds: an event's `occurredAt`, `as_of`, `grantedAt`, …), so what is stored and
    /// compared is what a reader sees, and an `as_of` equal to an event's `occurredAt` includes it.
    pub fn now(&self) -> DateTime<Utc> {
        let real = Utc::now();
        let now = match *self.offset.read().expect("clock lock poisoned") {
            Some(offset) => real + offset,
            None => real,
        };
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }

    /// Sets the clock to `now` (it keeps running from there); `None` returns to the real clock.
    pub fn set(&self, now: Option<DateTime<Utc>>) {
        *self.offset.write().expect("clock lock poisoned") = now.map(|t| t - Utc::now());
    }

    pub fn advance(&self, seconds: i64) {
        let mut offset = self.offset.write().expect("clock lock poisoned");
        *offset = Some(offset.unwrap_or_else(Duration::zero) + Duration::seconds(seconds));
    }
}
