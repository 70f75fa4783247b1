//! `reserve_actions` (the one implementation of the tool limits, docs/limits.md) against a model of
//! the rules written out in Rust: random batches of reservations — several agents and orgs,
//! clocks that cross a rolling window's edge inside a batch, batches wider than a window,
//! releases, day and month caps, contact frequency — must get, request by request, the decision
//! the rules give when the requests are taken one after the other: the same refusing limit,
//! current value, maximum and reset time.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::TestDb;

/// A small deterministic generator (xorshift64*): the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Default)]
struct Limits {
    per_minute: Option<i64>,
    per_hour: Option<i64>,
    per_day: Option<i64>,
    spend_day: Option<i64>,
    spend_month: Option<i64>,
    org_spend_day: Option<i64>,
    org_spend_month: Option<i64>,
}

#[derive(Clone)]
struct Request {
    id: Uuid,
    agent: &'static str,
    org: &'static str,
    now: DateTime<Utc>,
    cost: i64,
    limits: Limits,
    contact: Option<&'static str>,
    contact_max: Option<i64>,
}

impl Request {
    fn json(&self) -> Value {
        let l = self.limits;
        json!({
            "id": self.id, "agent": self.agent, "org": self.org, "now": self.now, "cost": self.cost,
            "perMinute": l.per_minute, "perHour": l.per_hour, "perDay": l.per_day,
            "spendDay": l.spend_day, "spendMonth": l.spend_month,
            "orgSpendDay": l.org_spend_day, "orgSpendMonth": l.org_spend_month,
            "contact": self.contact, "contactMax": self.contact_max,
            "owner": Uuid::nil(), "intent": {"request": self.id},
        })
    }
}

/// One decision: `None` reserved, else the refusing limit, its current value, its maximum, and
/// when it resets.
type Decision = Option<(String, i64, i64, DateTime<Utc>)>;

struct Slot {
    agent: &'static str,
    at: DateTime<Utc>,
    ord: i64,
    released: bool,
}

/// The rules of docs/limits.md, one request after the other.
#[derive(Default)]
struct Model {
    slots: Vec<Slot>,
    /// (scope, key, period, period start) → (actions, spend).
    counters: HashMap<(&'static str, String, &'static str, NaiveDate), (i64, i64)>,
}

fn day_of(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
}

fn month_of(t: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap()
}

fn midnight_after(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.succ_opt().unwrap().and_hms_opt(0, 0, 0).unwrap())
}

fn month_after(month: NaiveDate) -> DateTime<Utc> {
    let next = if month.month() == 12 {
        NaiveDate::from_ymd_opt(month.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(month.year(), month.month() + 1, 1)
    };
    Utc.from_utc_datetime(&next.unwrap().and_hms_opt(0, 0, 0).unwrap())
}

impl Model {
    fn keys(r: &Request) -> Vec<(&'static str, String, &'static str, NaiveDate)> {
        let (day, month) = (day_of(r.now), month_of(r.now));
        let mut keys = vec![
            ("agent", r.agent.to_string(), "day", day),
            ("agent", r.agent.to_string(), "month", month),
            ("org", r.org.to_string(), "day", day),
            ("org", r.org.to_string(), "month", month),
        ];
        if let Some(contact) = r.contact {
            keys.push(("contact", format!("{}|{contact}", r.agent), "day", day));
        }
        keys
    }

    fn counter(&self, scope: &'static str, key: &str, period: &'static str, start: NaiveDate) -> (i64, i64) {
        self.counters.get(&(scope, key.to_string(), period, start)).copied().unwrap_or((0, 0))
    }

    /// The live actions of `agent` inside the window of `seconds` ending at `now`: how many, and
    /// the oldest one's time.
    fn window(&self, agent: &str, now: DateTime<Utc>, seconds: i64) -> (i64, Option<DateTime<Utc>>) {
        let inside =
            self.slots.iter().filter(|s| s.agent == agent && !s.released && s.at > now - Duration::seconds(seconds));
        let oldest = inside.clone().min_by_key(|s| (s.at, s.ord)).map(|s| s.at);
        (inside.count() as i64, oldest)
    }

    fn decide(&mut self, r: &Request) -> Decision {
        let l = r.limits;
        let (day, month) = (day_of(r.now), month_of(r.now));
        let refuse =
            |name: &str, current: i64, max: i64, reset: DateTime<Utc>| Some((name.to_string(), current, max, reset));
        for (limit, seconds, name) in [(l.per_minute, 60, "per-minute"), (l.per_hour, 3600, "per-hour")] {
            if let Some(max) = limit {
                let (count, oldest) = self.window(r.agent, r.now, seconds);
                if count >= max {
                    return refuse(name, count, max, oldest.unwrap() + Duration::seconds(seconds));
                }
            }
        }
        let (day_actions, day_spend) = self.counter("agent", r.agent, "day", day);
        let (_, month_spend) = self.counter("agent", r.agent, "month", month);
        let (_, org_day_spend) = self.counter("org", r.org, "day", day);
        let (_, org_month_spend) = self.counter("org", r.org, "month", month);
        let checks = [
            (l.per_day, day_actions, "per-day", midnight_after(day)),
            (l.spend_day, day_spend, "daily-spend", midnight_after(day)),
            (l.spend_month, month_spend, "monthly-spend", month_after(month)),
            (l.org_spend_day, org_day_spend, "org_spend_day", midnight_after(day)),
            (l.org_spend_month, org_month_spend, "org_spend_month", month_after(month)),
        ];
        for (limit, current, name, reset) in checks {
            if let Some(max) = limit {
                if current >= max {
                    return refuse(name, current, max, reset);
                }
            }
        }
        if let (Some(contact), Some(max)) = (r.contact, r.contact_max) {
            let (actions, _) = self.counter("contact", &format!("{}|{contact}", r.agent), "day", day);
            if actions >= max {
                return refuse("contact-frequency", actions, max, midnight_after(day));
            }
        }
        // Reserved: the slot continues the agent's order, in time and in ordinal.
        let last = self.slots.iter().filter(|s| s.agent == r.agent).max_by_key(|s| s.ord);
        let (ord, at) = match last {
            Some(last) => (last.ord + 1, r.now.max(last.at)),
            None => (1, r.now),
        };
        self.slots.push(Slot { agent: r.agent, at, ord, released: false });
        for (scope, key, period, start) in Self::keys(r) {
            let spend = if scope == "contact" { 0 } else { r.cost };
            let entry = self.counters.entry((scope, key, period, start)).or_default();
            entry.0 += 1;
            entry.1 += spend;
        }
        None
    }

    /// A reservation given back (`release_intent`): its slot no longer counts, nor its counters.
    fn release(&mut self, r: &Request, ord: i64) {
        let slot = self.slots.iter_mut().find(|s| s.agent == r.agent && s.ord == ord).unwrap();
        slot.released = true;
        for (scope, key, period, start) in Self::keys(r) {
            let spend = if scope == "contact" { 0 } else { r.cost };
            let entry = self.counters.get_mut(&(scope, key, period, start)).unwrap();
            entry.0 -= 1;
            entry.1 -= spend;
        }
    }
}

async fn run(seed: u64, windows_only: bool) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    let mut rng = Rng(seed);
    let agents = [("a1", "o1"), ("a2", "o1"), ("a3", "o2")];
    let limits: HashMap<&str, Limits> = agents
        .iter()
        .map(|&(agent, org)| {
            let mut l = Limits {
                per_minute: rng.pick(&[None, Some(3), Some(5)]),
                per_hour: rng.pick(&[None, Some(7), Some(12)]),
                ..Limits::default()
            };
            if !windows_only {
                l.per_day = rng.pick(&[None, Some(15), Some(25)]);
                l.spend_day = rng.pick(&[None, Some(900), Some(2_000)]);
                l.spend_month = rng.pick(&[None, Some(3_000)]);
                (l.org_spend_day, l.org_spend_month) =
                    if org == "o1" { (Some(2_500), Some(6_000)) } else { (None, Some(1_500)) };
            }
            (agent, l)
        })
        .collect();
    let mut model = Model::default();
    // The reservations that may be given back: the request and its slot's ordinal.
    let mut held: Vec<(Request, i64)> = Vec::new();
    let mut t = Utc.with_ymd_and_hms(2026, 1, 31, 23, 50, 0).unwrap();
    let (mut decided, mut refused, mut reserved) = (0, 0, 0);
    for round in 0..120 {
        // The clock: small steps, and often just past the minute or hour of an earlier action,
        // so that actions leave a window between two requests of one batch.
        t += Duration::milliseconds(rng.pick(&[1, 2, 4, 300, 1_000, 5_000, 15_000, 120_000]));
        if !held.is_empty() && rng.chance(50) {
            let (earlier, _) = &held[rng.below(held.len() as u64) as usize];
            let edge = earlier.now
                + Duration::seconds(rng.pick(&[60, 3600]))
                + Duration::milliseconds(rng.pick(&[-4, -1, 0, 2]));
            t = t.max(edge);
        }
        let wide = rng.chance(10);
        let mut spread = t;
        let mut batch = Vec::new();
        for _ in 0..rng.pick(&[1, 1, 2, 4, 8]) {
            let (agent, org) = rng.pick(&agents);
            let now = if wide {
                // Requests of one batch further apart than a window.
                spread += Duration::milliseconds(rng.pick(&[500, 20_000, 45_000, 61_000]));
                spread
            } else {
                t + Duration::milliseconds(rng.pick(&[0, 0, 1, 3, 7]))
            };
            let contact = rng.pick(&[None, Some("c1"), Some("c2")]);
            batch.push(Request {
                id: Uuid::new_v4(),
                agent,
                org,
                now,
                cost: rng.pick(&[0, 50, 100, 250]),
                limits: limits[agent],
                contact,
                contact_max: contact.and(rng.pick(&[None, Some(2), Some(4)])),
            });
        }
        t = t.max(spread);
        let requests = Value::Array(batch.iter().map(Request::json).collect());
        type Row = (i64, Option<String>, Option<i64>, Option<i64>, Option<DateTime<Utc>>);
        let rows: Vec<Row> =
            sqlx::query_as("SELECT * FROM reserve_actions($1)").bind(&requests).fetch_all(&pool).await.unwrap();
        assert_eq!(rows.len(), batch.len());
        for (i, (request, row)) in batch.iter().zip(rows).enumerate() {
            let expected = model.decide(request);
            let got = row.1.map(|name| (name, row.2.unwrap(), row.3.unwrap(), row.4.unwrap()));
            assert_eq!(row.0, i as i64 + 1);
            assert_eq!(got, expected, "seed {seed}, round {round}, request {i} of {}", requests);
            decided += 1;
            match got {
                Some(_) => refused += 1,
                None => {
                    reserved += 1;
                    let ord = model.slots.last().unwrap().ord;
                    held.push((request.clone(), ord));
                }
            }
        }
        // Sometimes a reservation is given back, as a send that never left does.
        if !held.is_empty() && rng.chance(30) {
            let (request, ord) = held.swap_remove(rng.below(held.len() as u64) as usize);
            sqlx::query("SELECT release_intent($1)").bind(request.id).execute(&pool).await.unwrap();
            model.release(&request, ord);
        }
    }
    // The run exercised both outcomes.
    assert!(reserved > 20 && refused > 20, "seed {seed}: {decided} decided, {reserved} reserved, {refused} refused");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_decide_as_the_limit_rules_do_one_request_after_the_other() {
    for seed in [0x9E37_79B9_7F4A_7C15, 0xD1B5_4A32_D192_ED03] {
        run(seed, false).await;
    }
    for seed in [0x94D0_49BB_1331_11EB, 0xBF58_476D_1CE4_E5B9, 0x2545_F491_4F6C_DD1D] {
        run(seed, true).await;
    }
}
