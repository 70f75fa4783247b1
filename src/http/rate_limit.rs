//! Step 7: HTTP rate limits (docs/http.md#rate-limits-and-brute-force): a sliding 60-second window per instance, per IP
//! first, then global. `/webhooks/*` use their own per-IP limit and skip the global bucket.
//! A refused request takes no slot. In memory by design: this protects one instance's capacity
//! (principle 3, docs/security.md#principles); limits that must hold across instances live in Postgres.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::ip_filter::under;
use super::{ClientIp, Hardening};
use crate::error::{ApiError, ErrorCode};

const WINDOW: Duration = Duration::from_secs(60);

/// The key of an IP's bucket: IPv4 as is, IPv6 by its /64 (one subscriber's prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Bucket {
    Http(IpKey),
    Webhook(IpKey),
}

/// Requests admitted within this span of each other share one entry of a window's log.
const GRAIN: Duration = Duration::from_millis(1);

/// A sliding-window log of the requests admitted in the last 60 s. Requests admitted within
/// `GRAIN` of an entry's first one share that entry (its instant and their count), and leave the
/// window together `GRAIN` after that instant's 60 s: each at most 1 ms later than it would alone,
/// never earlier, so the window admits no more than an exact log. The log holds at most one entry
/// per millisecond (60,000, 1.4 MB) whatever the request rate; one entry per request held 16 bytes
/// for every request of the last minute (77 MB at the 40,000 requests a second of
/// `scripts/bench.sh mcp`).
#[derive(Default)]
struct Window {
    log: VecDeque<(Instant, u32)>,
    /// The requests the log holds.
    admitted: usize,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while let Some(&(first, count)) = self.log.front() {
            if now.duration_since(first) < WINDOW + GRAIN {
                break;
            }
            self.admitted -= count as usize;
            self.log.pop_front();
        }
    }

    /// Seconds until a slot frees, when full.
    fn full(&mut self, limit: u32, now: Instant) -> Option<u64> {
        self.prune(now);
        if self.admitted < limit as usize {
            return None;
        }
        // As an exact log would say it (at most 60): the slot frees within 1 ms of it.
        let (oldest, _) = *self.log.front()?;
        let wait = WINDOW.saturating_sub(now.duration_since(oldest));
        Some(wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Takes a slot at `now` (an instant a little older than the newest entry's, taken by another
    /// thread before this one's but admitted after it, joins that entry).
    fn take(&mut self, now: Instant) {
        self.admitted += 1;
        match self.log.back_mut() {
            Some((first, count)) if now.saturating_duration_since(*first) < GRAIN && *count < u32::MAX => *count += 1,
            _ => self.log.push_back((now, 1)),
        }
    }

    fn is_empty(&self) -> bool {
        self.admitted == 0
    }
}

pub struct RateLimits {
    per_ip: u32,
    global: u32,
    webhook_per_ip: u32,
    state: Mutex<State_>,
}

#[derive(Default)]
struct State_ {
    buckets: HashMap<Bucket, Window>,
    global: Window,
}

/// Which limit refused a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    PerIp { retry_after: u64 },
    Global { retry_after: u64 },
}

impl RateLimits {
    pub fn new(per_ip: u32, global: u32, webhook_per_ip: u32) -> Self {
        Self { per_ip, global, webhook_per_ip, state: Mutex::new(State_::default()) }
    }

    /// Admits a request from `ip` (to a webhook route or not) at `now`, or says which limit
    /// refused it. Both windows are checked before either takes the slot.
    pub fn admit(&self, ip: IpAddr, webhook: bool, now: Instant) -> Result<(), Refused> {
        let mut state = self.state.lock().expect("rate limit lock");
        let key = IpKey::from(ip);
        let (bucket, limit) =
            if webhook { (Bucket::Webhook(key), self.webhook_per_ip) } else { (Bucket::Http(key), self.per_ip) };
        if let Some(retry_after) = state.buckets.entry(bucket).or_default().full(limit, now) {
            return Err(Refused::PerIp { retry_after });
        }
        if !webhook {
            if let Some(retry_after) = state.global.full(self.global, now) {
                return Err(Refused::Global { retry_after });
            }
            state.global.take(now);
        }
        state.buckets.get_mut(&bucket).expect("inserted above").take(now);
        Ok(())
    }

    /// Drops windows with no request in the last 60 s.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("rate limit lock");
        state.buckets.retain(|_, w| {
            w.prune(now);
            !w.is_empty()
        });
    }

    pub fn tracked_ips(&self) -> usize {
        self.state.lock().expect("rate limit lock").buckets.len()
    }
}

pub async fn layer(h: &Hardening, request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    if h.demo {
        return next(request).await;
    }
    let ip = request.extensions().get::<ClientIp>().map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0);
    let webhook = under(request.uri().path(), "/webhooks");
    match h.limits.admit(ip, webhook, Instant::now()) {
        Ok(()) => next(request).await,
        Err(Refused::PerIp { retry_after }) => {
            h.metrics.http_rate_limit_hit("per_ip");
            ApiError::new(ErrorCode::RateLimited, "Too many requests")
                .header("retry-after", retry_after.to_string())
                .into_response()
        }
        Err(Refused::Global { retry_after }) => {
            h.metrics.http_rate_limit_hit("global");
            ApiError::new(ErrorCode::RateLimited, "Too many requests (global limit)")
                .header("retry-after", retry_after.to_string())
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_then_global_and_refusals_take_no_slot() {
        let limits = RateLimits::new(2, 3, 5);
        let t0 = Instant::now();
        assert!(limits.admit(ip("1.1.1.1"), false, t0).is_ok());
        assert!(limits.admit(ip("1.1.1.1"), false, t0).is_ok());
        assert_eq!(limits.admit(ip("1.1.1.1"), false, t0), Err(Refused::PerIp { retry_after: 60 }));
        assert!(limits.admit(ip("2.2.2.2"), false, t0).is_ok());
        assert_eq!(limits.admit(ip("3.3.3.3"), false, t0), Err(Refused::Global { retry_after: 60 }));
        // The refused requests took nothing: after the window, exactly the limit passes again.
        let later = t0 + Duration::from_secs(61);
        assert!(limits.admit(ip("1.1.1.1"), false, later).is_ok());
        assert!(limits.admit(ip("1.1.1.1"), false, later).is_ok());
        assert!(limits.admit(ip("1.1.1.1"), false, later).is_err());
    }

    #[test]
    fn retry_after_counts_down_to_the_oldest_slot() {
        let limits = RateLimits::new(1, 100, 5);
        let t0 = Instant::now();
        limits.admit(ip("1.1.1.1"), false, t0).unwrap();
        assert_eq!(
            limits.admit(ip("1.1.1.1"), false, t0 + Duration::from_millis(45_500)),
            Err(Refused::PerIp { retry_after: 15 })
        );
        assert_eq!(
            limits.admit(ip("1.1.1.1"), false, t0 + Duration::from_millis(59_990)),
            Err(Refused::PerIp { retry_after: 1 })
        );
    }

    #[test]
    fn a_window_holds_one_entry_per_millisecond_and_stays_exact() {
        // Requests within a millisecond share an entry; the limit still admits exactly its count.
        let limits = RateLimits::new(3, 1_000_000_000, 5);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limits.admit(ip("1.1.1.1"), false, t0).is_ok());
        }
        assert!(limits.admit(ip("1.1.1.1"), false, t0 + Duration::from_micros(500)).is_err());
        // They leave together, 1 ms after the first of them is 60 s old: never before any of them.
        let t1 = t0 + Duration::from_micros(900);
        assert!(limits.admit(ip("2.2.2.2"), false, t0).is_ok());
        assert!(limits.admit(ip("2.2.2.2"), false, t1).is_ok());
        assert!(limits.admit(ip("2.2.2.2"), false, t1).is_ok());
        assert!(limits.admit(ip("2.2.2.2"), false, t1 + WINDOW).is_err());
        for _ in 0..3 {
            assert!(limits.admit(ip("2.2.2.2"), false, t0 + WINDOW + GRAIN).is_ok());
        }
        assert!(limits.admit(ip("2.2.2.2"), false, t0 + WINDOW + GRAIN).is_err());
        // A request 1 ms after an entry's first opens the next entry.
        assert!(limits.admit(ip("3.3.3.3"), false, t0).is_ok());
        assert!(limits.admit(ip("3.3.3.3"), false, t0 + GRAIN).is_ok());
        assert!(limits.admit(ip("3.3.3.3"), false, t0 + GRAIN).is_ok());
        assert!(limits.admit(ip("3.3.3.3"), false, t0 + WINDOW + GRAIN).is_ok(), "the first entry left alone");
        assert!(limits.admit(ip("3.3.3.3"), false, t0 + WINDOW + GRAIN).is_err());

        // A million requests in one second: the global log keeps 1,000 entries and counts them all.
        let mut window = Window::default();
        for i in 0..1_000_000u64 {
            window.take(t0 + Duration::from_micros(i));
        }
        assert_eq!((window.admitted, window.log.len()), (1_000_000, 1_000));
        assert_eq!(window.full(1_000_000, t0 + Duration::from_secs(1)), Some(59));
        assert_eq!(window.full(1_000_001, t0 + Duration::from_secs(1)), None);
        window.prune(t0 + WINDOW + Duration::from_millis(500));
        assert_eq!((window.admitted, window.log.len()), (500_000, 500));
    }

    #[test]
    fn webhooks_have_their_own_limit_and_skip_the_global_bucket() {
        let limits = RateLimits::new(1, 1, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limits.admit(ip("1.1.1.1"), true, t0).is_ok());
        }
        assert!(limits.admit(ip("1.1.1.1"), true, t0).is_err());
        assert!(limits.admit(ip("9.9.9.9"), false, t0).is_ok(), "the global bucket saw no webhook");
    }

    #[test]
    fn ipv6_clients_share_their_64_and_idle_state_is_pruned() {
        let limits = RateLimits::new(1, 100, 5);
        let t0 = Instant::now() - Duration::from_secs(120);
        limits.admit(ip("2001:db8:1:2::1"), false, t0).unwrap();
        assert!(limits.admit(ip("2001:db8:1:2::ffff"), false, t0).is_err());
        assert!(limits.admit(ip("2001:db8:1:3::1"), false, t0).is_ok());
        assert_eq!(limits.tracked_ips(), 2);
        limits.prune();
        assert_eq!(limits.tracked_ips(), 0);
    }
}
