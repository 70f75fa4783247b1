//! `reserve_actions` (the one implementation of the tool limits, docs/limits.md) against a model of
//! the rules written out in Rust: random batches of reservations — several agents and orgs,
//! clocks that cross a rolling window's edge inside a batch, batches wider than a window,
//! releases, day and month caps, contact frequency — must get, request by request, the decision
//! the rules give when the requests are taken one after the other: the same refusing limit,
//! current value, maximum and reset time. Batches where one agent's requests follow each other
//! check the reuse of the agent's read between them (migration 0032).

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
        // The calendar checks in the contract's order (CONTRACT §9.1): the contact's frequency
        // (only when the request names a contact and its maximum) before the org's spend caps.
        let contact_actions =
            r.contact.map(|contact| self.counter("contact", &format!("{}|{contact}", r.agent), "day", day).0);
        let checks = [
            (l.per_day, day_actions, "per-day", midnight_after(day)),
            (l.spend_day, day_spend, "daily-spend", midnight_after(day)),
            (l.spend_month, month_spend, "monthly-spend", month_after(month)),
            (
                r.contact_max.filter(|_| contact_actions.is_some()),
                contact_actions.unwrap_or(0),
                "contact-frequency",
                midnight_after(day),
            ),
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

    /// What the store holds is what the model does: every slot, and every counter row that
    /// counts something (a row given back to zero may stay). A contact row never counts spend,
    /// reserved or released (migration 0039).
    async fn assert_stored(&self, pool: &sqlx::PgPool, seed: u64) {
        let mut slots: Vec<(String, i64, DateTime<Utc>, bool)> =
            sqlx::query_as("SELECT agent_id, ord, at, released FROM recent_actions").fetch_all(pool).await.unwrap();
        let mut expected: Vec<(String, i64, DateTime<Utc>, bool)> =
            self.slots.iter().map(|s| (s.agent.to_string(), s.ord, s.at, s.released)).collect();
        slots.sort();
        expected.sort();
        assert_eq!(slots, expected, "seed {seed}: the slots");
        let rows: Vec<(String, String, String, NaiveDate, i64, i64)> =
            sqlx::query_as("SELECT scope, key, period, period_start, actions, spend FROM usage_counters")
                .fetch_all(pool)
                .await
                .unwrap();
        let stored: HashMap<(String, String, String, NaiveDate), (i64, i64)> = rows
            .into_iter()
            .map(|(scope, key, period, start, actions, spend)| ((scope, key, period, start), (actions, spend)))
            .filter(|(_, counted)| *counted != (0, 0))
            .collect();
        let expected: HashMap<(String, String, String, NaiveDate), (i64, i64)> = self
            .counters
            .iter()
            .filter(|(_, counted)| **counted != (0, 0))
            .map(|((scope, key, period, start), counted)| {
                ((scope.to_string(), key.clone(), period.to_string(), *start), *counted)
            })
            .collect();
        assert_eq!(stored, expected, "seed {seed}: the counters");
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

/// `batch` through `reserve_actions`, each answer checked against the model's decision for it
/// (taken in order); returns the decisions, each reservation's with its slot's ordinal.
async fn decide(pool: &sqlx::PgPool, model: &mut Model, batch: &[Request], label: &str) -> Vec<Result<i64, Decision>> {
    let requests = Value::Array(batch.iter().map(Request::json).collect());
    type Row = (i64, Option<String>, Option<i64>, Option<i64>, Option<DateTime<Utc>>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT * FROM reserve_actions($1)").bind(&requests).fetch_all(pool).await.unwrap();
    assert_eq!(rows.len(), batch.len());
    let mut decisions = Vec::new();
    for (i, (request, row)) in batch.iter().zip(rows).enumerate() {
        let expected = model.decide(request);
        let got = row.1.map(|name| (name, row.2.unwrap(), row.3.unwrap(), row.4.unwrap()));
        assert_eq!(row.0, i as i64 + 1);
        assert_eq!(got, expected, "{label}, request {i} of {requests}");
        decisions.push(match got {
            None => Ok(model.slots.last().unwrap().ord),
            refused => Err(refused),
        });
    }
    decisions
}

/// `start`: the clock's first reading (the run covers about two hours of it).
async fn run(seed: u64, windows_only: bool, start: DateTime<Utc>) {
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
                per_hour: rng.pick(&[None, None, Some(7), Some(12)]),
                ..Limits::default()
            };
            if !windows_only {
                l.per_day = rng.pick(&[None, Some(15), Some(25)]);
                l.spend_day = rng.pick(&[None, Some(900), Some(2_000)]);
                l.spend_month = rng.pick(&[None, Some(3_000)]);
                (l.org_spend_day, l.org_spend_month) = if org == "o1" {
                    rng.pick(&[(Some(2_500), Some(6_000)), (None, Some(2_000))])
                } else {
                    (None, Some(1_500))
                };
            }
            (agent, l)
        })
        .collect();
    let mut model = Model::default();
    // The reservations that may be given back: the request and its slot's ordinal.
    let mut held: Vec<(Request, i64)> = Vec::new();
    let mut t = start;
    let (mut decided, mut refused, mut reserved) = (0, 0, 0);
    for round in 0..400 {
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
        // Sometimes one agent fills the batch, as one busy agent does under load: its requests
        // then reuse the read of the request before them (migration 0032).
        let burst = rng.chance(30).then(|| rng.pick(&agents));
        let mut spread = t;
        let mut batch = Vec::new();
        let size = if burst.is_some() { rng.pick(&[2, 4, 8, 16]) } else { rng.pick(&[1, 1, 2, 4, 8]) };
        for _ in 0..size {
            let (agent, org) = burst.unwrap_or_else(|| rng.pick(&agents));
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
        for (request, got) in
            batch.iter().zip(decide(&pool, &mut model, &batch, &format!("seed {seed}, round {round}")).await)
        {
            decided += 1;
            match got {
                Err(_) => refused += 1,
                Ok(ord) => {
                    reserved += 1;
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
    model.assert_stored(&pool, seed).await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_decide_as_the_limit_rules_do_one_request_after_the_other() {
    // Across a month's end, and across a day's end inside a month.
    let month_end = Utc.with_ymd_and_hms(2026, 1, 31, 23, 50, 0).unwrap();
    let day_end = Utc.with_ymd_and_hms(2026, 1, 30, 23, 58, 0).unwrap();
    for (seed, start) in [(0x9E37_79B9_7F4A_7C15, month_end), (0xD1B5_4A32_D192_ED03, day_end)] {
        run(seed, false, start).await;
    }
    for seed in [0x94D0_49BB_1331_11EB, 0xBF58_476D_1CE4_E5B9, 0x2545_F491_4F6C_DD1D] {
        run(seed, true, month_end).await;
    }
}

/// One request of `agent` (in org `org`) at `now`.
fn request(agent: &'static str, org: &'static str, now: DateTime<Utc>, cost: i64, limits: Limits) -> Request {
    Request { id: Uuid::new_v4(), agent, org, now, cost, limits, contact: None, contact_max: None }
}

/// Migration 0032: a request reuses the read of the request before it in its batch only while that
/// read, advanced by the batch's own reservations, is what a read would return. Each batch below
/// is built so that reusing where it must not, or not advancing one part of what was read, changes
/// a decision; the model decides every request as if it were alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_requests_of_one_agent_decide_as_if_each_read_alone() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    let mut model = Model::default();
    let t0 = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
    let ms = Duration::milliseconds;
    let minute = |n| Limits { per_minute: Some(n), ..Limits::default() };
    let hour = |n| Limits { per_hour: Some(n), ..Limits::default() };
    let burst = |agent, org, at: DateTime<Utc>, n: i64, cost, limits| {
        (0..n).map(|i| request(agent, org, at + ms(i), cost, limits)).collect::<Vec<_>>()
    };
    // (what the batch is about, how many of its requests the limits refuse, the batch)
    let batches: Vec<(&str, usize, Vec<Request>)> = vec![
        // An empty window gets its first live action from the batch, and counts it after.
        ("minute window filled by the batch", 2, burst("d1", "e1", t0, 5, 10, minute(3))),
        ("hour window filled by the batch", 2, burst("d2", "e2", t0, 4, 10, hour(2))),
        // Every counter the checks read moves with the batch's own reservations.
        ("per-day", 1, burst("d3", "e3", t0, 4, 10, Limits { per_day: Some(3), ..Limits::default() })),
        ("daily spend", 1, burst("d4", "e4", t0, 4, 100, Limits { spend_day: Some(250), ..Limits::default() })),
        ("monthly spend", 1, burst("d5", "e5", t0, 4, 100, Limits { spend_month: Some(250), ..Limits::default() })),
        ("org daily spend", 1, burst("d6", "e6", t0, 4, 100, Limits { org_spend_day: Some(250), ..Limits::default() })),
        (
            "org monthly spend",
            1,
            burst("d7", "e7", t0, 4, 100, Limits { org_spend_month: Some(250), ..Limits::default() }),
        ),
        ("contact frequency", 1, {
            let mut b = burst("d8", "e8", t0, 3, 10, Limits::default());
            for r in &mut b {
                (r.contact, r.contact_max) = (Some("c1"), Some(2));
            }
            b
        }),
        // Both the contact's frequency and the org's daily cap refuse the third: the contract's
        // order names the contact's (CONTRACT §9.1).
        ("contact frequency before the org's cap", 1, {
            let mut b = burst("d16", "e16", t0, 3, 100, Limits { org_spend_day: Some(200), ..Limits::default() });
            for r in &mut b {
                (r.contact, r.contact_max) = (Some("c1"), Some(2));
            }
            b
        }),
        // A new day inside the batch: its counters are other rows.
        ("a day's end", 0, {
            let per_day = Limits { per_day: Some(1), ..Limits::default() };
            let midnight = Utc.with_ymd_and_hms(2026, 3, 11, 0, 0, 0).unwrap();
            vec![request("d9", "e9", midnight - ms(1), 10, per_day), request("d9", "e9", midnight + ms(1), 10, per_day)]
        }),
        // The first of the windows' actions, a minute or an hour old.
        ("before the edges", 0, vec![request("d10", "e10", t0, 10, minute(2)), request("d11", "e11", t0, 10, hour(2))]),
        // The oldest live action leaves the window between two requests of the batch.
        ("the minute's oldest leaves", 1, {
            vec![
                request("d10", "e10", t0 + Duration::seconds(30), 10, minute(2)),
                request("d10", "e10", t0 + Duration::seconds(60) + ms(1), 10, minute(2)),
                request("d10", "e10", t0 + Duration::seconds(60) + ms(2), 10, minute(2)),
            ]
        }),
        ("the hour's oldest leaves", 1, {
            vec![
                request("d11", "e11", t0 + Duration::seconds(1800), 10, hour(2)),
                request("d11", "e11", t0 + Duration::seconds(3600) + ms(1), 10, hour(2)),
                request("d11", "e11", t0 + Duration::seconds(3600) + ms(2), 10, hour(2)),
            ]
        }),
        ("before an edge", 0, vec![request("d12", "e12", t0, 10, minute(2))]),
        // A request earlier than the one before it: an action the earlier window had left is
        // inside its window again.
        ("a step back in time", 1, {
            vec![
                request("d12", "e12", t0 + Duration::seconds(60) + ms(5), 10, minute(2)),
                request("d12", "e12", t0 + Duration::seconds(60) - ms(5), 10, minute(2)),
            ]
        }),
        ("unlimited first", 0, burst("d13", "e13", t0, 2, 10, Limits::default())),
        // The limits changed between two requests: a window the previous one did not check.
        ("a window checked from the second request on", 2, {
            let mut b = burst("d13", "e13", t0 + ms(10), 2, 10, Limits::default());
            b[1].limits = minute(3);
            b.push(request("d13", "e13", t0 + ms(20), 10, Limits::default()));
            b.push(request("d13", "e13", t0 + ms(21), 10, hour(3)));
            b
        }),
        // One agent id under two orgs: never so in the product, but the function is exact for any
        // input, so the second request reads its own org's spend (200, not 100).
        ("another org's spend", 0, burst("d15", "e15", t0, 2, 100, Limits::default())),
        ("one agent id in two orgs", 1, {
            let capped = Limits { org_spend_day: Some(150), ..Limits::default() };
            vec![request("d14", "e14", t0, 100, Limits::default()), request("d14", "e15", t0 + ms(1), 100, capped)]
        }),
    ];
    for (label, refusals, batch) in batches {
        let decisions = decide(&pool, &mut model, &batch, label).await;
        // Each batch that is about a limit reaching its maximum reached it (the model agreed above).
        assert_eq!(decisions.iter().filter(|d| d.is_err()).count(), refusals, "{label}");
    }
    pool.close().await;
}
