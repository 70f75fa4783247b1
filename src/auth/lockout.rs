//! Brute-force lockout (docs/http.md#rate-limits-and-brute-force), shared by every instance through Postgres.
//!
//! Each credential failure is an `AuthFailed` event on the IP's stream and one atomic upsert of
//! the IP's counter (`auth_failures`, keyed by ipRef, the blind index of the address; IPv6 by
//! /64). The failure that reaches the threshold sets `locked_until` — exactly one request can
//! reach it, so exactly one `IpLockedOut` and one alert are recorded. Checking is free for IPs
//! no instance has seen fail: only IPs in the `suspects` set (local failures, and failures other
//! instances announce on `commguard_identity`) cost a read.

use crate::error::{ApiError, ErrorCode};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use commguard_domain::pii::{Pii, RetentionClass};
use commguard_domain::records::IpEvent;
use commguard_projections::directory::IDENTITY_CHANNEL;
use serde_json::json;

use super::AuthFailure;
use crate::alerts::{self, Finding};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{rfc3339, Actor, CommandContext, Store};

/// A refused check: locked until some time, or the check could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Locked { retry_after: u64 },
    Unavailable,
}

pub struct Lockout {
    store: Store,
    clock: Clock,
    enabled: bool,
    max_failures: i32,
    window: Duration,
    lock_for: Duration,
    /// The addresses with a counter row, as far as this instance knows: its own failures, the
    /// ones other instances announced, and the table's as loaded when the listener listened. An
    /// address outside it is not checked against Postgres — only while `watched`.
    suspects: Mutex<HashSet<String>>,
    /// Whether `suspects` is complete: the identity listener has loaded the table and hears every
    /// announcement since. Until it has (start-up, a lost connection, a failed load) every
    /// address is checked against Postgres, so a lock set elsewhere meanwhile still refuses here.
    watched: AtomicBool,
    /// How many failures this instance could not count (the counter's statement failed), by
    /// address. Until they are counted the address's credentialed requests are answered
    /// `unavailable`: its count is short, so whether it is locked cannot be told, and a check
    /// that cannot be evaluated refuses (docs/security.md#principles, P5).
    uncounted: Mutex<HashMap<String, u32>>,
    metrics: Arc<Metrics>,
}

/// The address lockouts count by: IPv4 (also when IPv4-mapped), or the IPv6 /64 network.
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Lockout {
    pub fn new(config: &Config, store: Store, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            clock,
            enabled: !config.demo_mode,
            max_failures: config.brute_force_max_failures as i32,
            window: Duration::seconds(config.brute_force_window_seconds as i64),
            lock_for: Duration::seconds(config.brute_force_lockout_seconds as i64),
            suspects: Mutex::default(),
            watched: AtomicBool::new(false),
            uncounted: Mutex::default(),
            metrics,
        }
    }

    pub fn ip_ref(&self, ip: IpAddr) -> String {
        self.store.keystore().data_keys().blind_index(&ip_key(ip))
    }

    /// Another instance saw a failure from `ip_ref`: check it against Postgres from now on.
    pub fn suspect(&self, ip_ref: String) {
        self.suspects.lock().expect("suspects lock").insert(ip_ref);
    }

    /// After a lost notification connection: every IP with a counter is a suspect again.
    pub async fn reload_suspects(&self) -> Result<(), sqlx::Error> {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT ip_key FROM auth_failures").fetch_all(self.store.pool()).await?;
        self.suspects.lock().expect("suspects lock").extend(keys);
        Ok(())
    }

    /// The identity listener has loaded the suspects and listens (`true`), or has lost its
    /// connection (`false`): see `watched`.
    pub fn watch(&self, complete: bool) {
        self.watched.store(complete, Ordering::Release);
    }

    fn watched(&self) -> bool {
        self.watched.load(Ordering::Acquire)
    }

    /// Step 1 of every credentialed route: is `ip` locked out?
    pub async fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if !self.enabled
            || (self.watched()
                && self.suspects.lock().expect("suspects lock").is_empty()
                && self.uncounted.lock().expect("uncounted lock").is_empty())
        {
            return Ok(());
        }
        let ip_ref = self.ip_ref(ip);
        self.count_missed(ip, &ip_ref).await?;
        if self.watched() && !self.suspects.lock().expect("suspects lock").contains(&ip_ref) {
            return Ok(());
        }
        let locked_until: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT locked_until FROM auth_failures WHERE ip_key = $1")
                .bind(&ip_ref)
                .fetch_optional(self.store.pool())
                .await
                .map_err(|e| {
                    crate::error::log_failure("lockout check failed", &e);
                    Refusal::Unavailable
                })?;
        let now = self.clock.now();
        match locked_until.flatten() {
            Some(until) if until > now => Err(Refusal::Locked { retry_after: retry_after(until, now) }),
            _ => Ok(()),
        }
    }

    /// Step (1) of every credentialed route: a locked IP gets 429 (recorded, not counted).
    pub async fn gate(&self, ip: IpAddr, route: &str) -> Result<(), ApiError> {
        match self.check(ip).await {
            Ok(()) => Ok(()),
            Err(Refusal::Locked { retry_after }) => {
                self.refused_while_locked(ip, route).await?;
                Err(locked_out(retry_after))
            }
            Err(Refusal::Unavailable) => Err(ApiError::new(ErrorCode::Unavailable, "Service unavailable")),
        }
    }

    /// A request refused while its IP is locked: recorded (it feeds anomaly detection), not
    /// counted (it does not extend the lock).
    pub async fn refused_while_locked(&self, ip: IpAddr, route: &str) -> Result<(), ApiError> {
        self.record_failure(ip, "locked", route, None, None).await
    }

    /// A failed credential check: recorded, counted, and at the threshold the IP is locked.
    /// `Err` (`unavailable`) when the failure could not be recorded: the caller answers that
    /// rather than a refusal that left no trace (principle 2, docs/security.md#principles).
    /// `token_fingerprint`: of the token presented, if one was (`crypto::tokens::fingerprint`).
    pub async fn fail(
        &self,
        ip: IpAddr,
        failure: AuthFailure,
        route: &str,
        token_fingerprint: Option<&str>,
        claimed_agent: Option<&str>,
    ) -> Result<(), ApiError> {
        if failure == AuthFailure::Unavailable {
            return Ok(());
        }
        // Counted whether or not it could be recorded: a guess answered `unavailable` because its
        // event failed is still a guess (the answer tells the guesser it was wrong).
        let recorded = self.record_failure(ip, failure.reason(), route, token_fingerprint, claimed_agent).await;
        if !self.enabled {
            return recorded;
        }
        let ip_ref = self.ip_ref(ip);
        let now = self.clock.now();
        let (failures, locked_until) = match self.count(ip, &ip_ref, now).await {
            Ok(counted) => counted,
            Err(e) => {
                // This request still gets its 401; the address's next ones wait for the count.
                crate::error::log_failure("brute-force counter not updated; the address is refused until it is", &e);
                *self.uncounted.lock().expect("uncounted lock").entry(ip_ref).or_default() += 1;
                return recorded;
            }
        };
        recorded?;
        match locked_until {
            // Counted after the lock (its request passed the gate before the lock was set): it is
            // answered as every credentialed request of a locked IP is, so that no guess beyond the
            // threshold is told it failed (it feeds §14 like any, and does not extend the lock).
            Some(until) if failures > self.max_failures && until > now => Err(locked_out(retry_after(until, now))),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `ip` that happened `at`: the last `max_failures` failures inside the
    /// window lock the IP (migration 0033). The address becomes a suspect here and on the other
    /// instances, and the failure that reaches the threshold records the lock. The count and the
    /// lock's end, if any.
    async fn count(
        &self,
        ip: IpAddr,
        ip_ref: &str,
        at: DateTime<Utc>,
    ) -> Result<(i32, Option<DateTime<Utc>>), sqlx::Error> {
        let (failures, locked_until): (i32, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT failures, locked_until FROM count_auth_failure($1, $2, $3, $4, $5)")
                .bind(ip_ref)
                .bind(at)
                .bind(self.max_failures)
                .bind(self.window)
                .bind(self.lock_for)
                .fetch_one(self.store.pool())
                .await?;
        self.suspect(ip_ref.to_string());
        let announced = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(IDENTITY_CHANNEL)
            .bind(json!({ "suspect": ip_ref }).to_string())
            .execute(self.store.pool())
            .await;
        if let Err(e) = announced {
            tracing::warn!(error = %e, "failure not announced to other instances");
        }
        if let Some(until) = locked_until.filter(|_| failures == self.max_failures) {
            self.locked_out(ip, ip_ref, failures, until).await;
        }
        Ok((failures, locked_until))
    }

    /// Counts the failures of `ip` this instance could not count when they happened — now, so
    /// that they stay in the window at least as long as they would have; `Unavailable` while that
    /// still fails. A request that finds them taken by a concurrent one of the same address goes
    /// on to the lock check meanwhile.
    async fn count_missed(&self, ip: IpAddr, ip_ref: &str) -> Result<(), Refusal> {
        let Some(mut missed) = self.uncounted.lock().expect("uncounted lock").remove(ip_ref) else {
            return Ok(());
        };
        while missed > 0 {
            if let Err(e) = self.count(ip, ip_ref, self.clock.now()).await {
                crate::error::log_failure("brute-force counter still not updated; the address is refused", &e);
                *self.uncounted.lock().expect("uncounted lock").entry(ip_ref.to_string()).or_default() += missed;
                return Err(Refusal::Unavailable);
            }
            missed -= 1;
        }
        Ok(())
    }

    /// A successful credential check resets the IP's count. If the IP was locked meanwhile —
    /// after this request's gate, by a failure here or on another instance —, the request is
    /// refused as every credentialed request of a locked IP is (`Err`: `locked_out`), and the
    /// IP stays a suspect so that the next request is checked against the lock.
    pub async fn succeed(&self, ip: IpAddr, route: &str) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let ip_ref = self.ip_ref(ip);
        // Out of the set before the statement: a failure announced from now on puts it back, and
        // one announced before is in the row the statement reads.
        // Unwatched, the address may have a row this instance never heard of: reset it anyway.
        if !self.suspects.lock().expect("suspects lock").remove(&ip_ref) && self.watched() {
            return Ok(());
        }
        let now = self.clock.now();
        // The rest of the statement reads the row as it was before the CTE's deletion: a row
        // that was not deleted is locked.
        let locked: Result<Option<DateTime<Utc>>, sqlx::Error> = sqlx::query_scalar(
            "WITH reset AS (DELETE FROM auth_failures
                             WHERE ip_key = $1 AND (locked_until IS NULL OR locked_until <= $2) RETURNING 1)
             SELECT locked_until FROM auth_failures
              WHERE ip_key = $1 AND locked_until > $2 AND NOT EXISTS (SELECT 1 FROM reset)",
        )
        .bind(&ip_ref)
        .bind(now)
        .fetch_optional(self.store.pool())
        .await
        .map(Option::flatten);
        match locked {
            Ok(None) => Ok(()),
            Ok(Some(until)) => {
                self.suspect(ip_ref);
                self.refused_while_locked(ip, route).await?;
                Err(locked_out(retry_after(until, now)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "failure count not reset");
                self.suspect(ip_ref);
                Ok(())
            }
        }
    }

    /// Forgets the counts that no longer count: an expired lock (the next failure starts afresh)
    /// and failures all older than the window. A scheduled job, on every instance.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM auth_failures
              WHERE locked_until <= $1
                 OR (locked_until IS NULL AND coalesce(recent[cardinality(recent)], window_start) <= $1 - $2)",
        )
        .bind(self.clock.now())
        .bind(self.window)
        .execute(self.store.pool())
        .await?;
        Ok(done.rows_affected())
    }

    fn context(&self) -> CommandContext {
        CommandContext::new(Actor::system("auth"), "http", self.clock.now())
    }

    async fn record_failure(
        &self,
        ip: IpAddr,
        reason: &str,
        route: &str,
        token_fingerprint: Option<&str>,
        claimed_agent: Option<&str>,
    ) -> Result<(), ApiError> {
        let event = IpEvent::AuthFailed {
            ip: Pii::retained(ip.to_string(), RetentionClass::Security),
            reason: reason.into(),
            route: route.into(),
            token_fingerprint: token_fingerprint.map(str::to_string),
            claimed_agent_id: claimed_agent.map(str::to_string),
        };
        match self.store.record("ip", &self.ip_ref(ip), &[event], &self.context()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                crate::error::log_failure("AuthFailed not recorded; answered unavailable", &e);
                Err(ApiError::unrecorded())
            }
        }
    }

    async fn locked_out(&self, ip: IpAddr, ip_ref: &str, failures: i32, until: DateTime<Utc>) {
        tracing::error!(ip_ref, failures, locked_until = %rfc3339(until), "Brute-force lockout");
        let locked = IpEvent::IpLockedOut {
            ip: Pii::retained(ip.to_string(), RetentionClass::Security),
            failures: failures as u32,
            locked_until: rfc3339(until),
        };
        if let Err(e) = self.store.record("ip", ip_ref, &[locked], &self.context()).await {
            crate::error::log_failure("IpLockedOut not recorded", &e);
        }
        // The `brute_force_lockout` rule at once (the detector raises it too, from the anomaly
        // projection's lockout windows, should this append fail: one key, one alert).
        let finding = Finding::lockout(ip_ref, Some(i64::from(failures)), self.clock.now(), until);
        if let Err(e) = alerts::raise(&self.store, &self.metrics, finding, self.context()).await {
            crate::error::log_failure("lockout alert not recorded", &e);
        }
    }
}

/// Whole seconds until `until`, at least 1: a lock's `Retry-After`.
fn retry_after(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    ((until - now).num_milliseconds().max(0) as u64).div_ceil(1000).max(1)
}

/// The docs/http.md#rate-limits-and-brute-force answer to a credentialed request from a locked IP.
pub fn locked_out(retry_after: u64) -> ApiError {
    ApiError::new(ErrorCode::LockedOut, "Too many failed attempts. Try again later.")
        .with("retryAfter", retry_after)
        .header("Retry-After", retry_after.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_eq!(ip_key("::ffff:10.0.0.7".parse().unwrap()), "10.0.0.7");
        assert_ne!(ip_key("2001:db8:1:3::1".parse().unwrap()), ip_key(a));
    }
}
