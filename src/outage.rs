//! Logging a dependency outage without flooding the log. While Postgres is down every request,
//! projection runner and listener fails, hundreds of times a second; `Outage` logs the first
//! failure, then at most one line every few seconds with how many failures it did not log, and
//! one line when a call succeeds again: `database reachable again after N s`.
//!
//! `DATABASE` is the process's one tracker for the database: failures come from the token
//! lookup, the pool (`error::ApiError::internal`, group commits, reservations), the projection
//! runners and the LISTEN watcher; successes from the runners (which poll every 100 ms), the
//! token lookup and the watcher.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The database, as every part of the process sees it.
pub static DATABASE: Outage = Outage::new("database", Duration::from_secs(5));

/// One dependency's state: up, or down since some instant.
pub struct Outage {
    name: &'static str,
    down: AtomicBool,
    /// Failures since the process started: what was known to work before this moved may not now.
    failures: AtomicU64,
    state: Mutex<State>,
}

impl Outage {
    /// A tracker that logs an ongoing outage at most once per `every`.
    pub const fn new(name: &'static str, every: Duration) -> Self {
        Self { name, down: AtomicBool::new(false), failures: AtomicU64::new(0), state: Mutex::new(State::new(every)) }
    }

    /// How many calls have failed since the process started (`failed`); a connection kept since
    /// before the last of them is not trusted (`store::kept`).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// A call failed because the dependency did not answer (`site` says which part of the
    /// process noticed).
    pub fn failed(&self, site: &'static str, error: &dyn Display) {
        let report = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.down.store(true, Ordering::Relaxed);
            self.failures.fetch_add(1, Ordering::Release);
            state.failed(Instant::now())
        };
        let name = self.name;
        match report {
            Report::Started => tracing::error!(dependency = name, site, error = %error, "{name} unreachable"),
            Report::Ongoing { down_for, suppressed } => tracing::warn!(
                dependency = name,
                site,
                error = %error,
                suppressed,
                "{name} still unreachable after {} s ({suppressed} failures not logged)",
                down_for.as_secs()
            ),
            Report::Quiet => {}
        }
    }

    /// A call succeeded. Free while the dependency is up; ends an outage otherwise.
    pub fn succeeded(&self) {
        if !self.down.load(Ordering::Relaxed) {
            return;
        }
        let ended = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.down.store(false, Ordering::Relaxed);
            state.succeeded(Instant::now())
        };
        if let Some((down_for, failures)) = ended {
            let name = self.name;
            tracing::warn!(dependency = name, failures, "{name} reachable again after {} s", down_for.as_secs());
        }
    }
}

/// What a failure should log.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// The first failure of an outage.
    Started,
    /// A reminder: the outage lasts, and this many failures since the last line were not logged.
    Ongoing { down_for: Duration, suppressed: u64 },
    /// Nothing: logged recently.
    Quiet,
}

/// The outage as a pure state machine over instants (so it can be tested without waiting).
struct State {
    every: Duration,
    since: Option<Instant>,
    last_line: Option<Instant>,
    suppressed: u64,
    failures: u64,
}

impl State {
    const fn new(every: Duration) -> Self {
        Self { every, since: None, last_line: None, suppressed: 0, failures: 0 }
    }

    fn failed(&mut self, now: Instant) -> Report {
        self.failures += 1;
        let Some(since) = self.since else {
            self.since = Some(now);
            self.last_line = Some(now);
            self.suppressed = 0;
            return Report::Started;
        };
        if self.last_line.is_some_and(|last| now.duration_since(last) < self.every) {
            self.suppressed += 1;
            return Report::Quiet;
        }
        self.last_line = Some(now);
        let suppressed = std::mem::take(&mut self.suppressed);
        Report::Ongoing { down_for: now.duration_since(since), suppressed }
    }

    /// The outage's length and failure count, if one was on.
    fn succeeded(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.suppressed = 0;
        self.last_line = None;
        Some((now.duration_since(since), failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_when_it_starts_then_every_few_seconds_with_a_count_then_when_it_ends() {
        let mut state = State::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(state.succeeded(at(0)), None, "nothing to end while up");
        assert_eq!(state.failed(at(0)), Report::Started);
        // ~310 refused requests a second: none logged until five seconds have passed.
        for i in 1..1550 {
            assert_eq!(state.failed(at(i * 1000 / 310)), Report::Quiet);
        }
        assert_eq!(state.failed(at(5_000)), Report::Ongoing { down_for: Duration::from_secs(5), suppressed: 1549 });
        assert_eq!(state.failed(at(6_000)), Report::Quiet);
        assert_eq!(state.failed(at(10_000)), Report::Ongoing { down_for: Duration::from_secs(10), suppressed: 1 });
        assert_eq!(state.succeeded(at(12_500)), Some((Duration::from_millis(12_500), 1553)));
        assert_eq!(state.succeeded(at(13_000)), None, "ended once");
        // The next outage starts afresh.
        assert_eq!(state.failed(at(20_000)), Report::Started);
        assert_eq!(state.succeeded(at(21_000)), Some((Duration::from_secs(1), 1)));
    }

    #[test]
    fn the_tracker_switches_between_up_and_down() {
        let outage = Outage::new("test dependency", Duration::from_secs(5));
        outage.succeeded();
        assert!(!outage.down.load(Ordering::Relaxed));
        outage.failed("test", &"connection refused");
        outage.failed("test", &"connection refused");
        assert!(outage.down.load(Ordering::Relaxed));
        outage.succeeded();
        assert!(!outage.down.load(Ordering::Relaxed));
        assert_eq!(outage.state.lock().unwrap().since, None);
    }
}
