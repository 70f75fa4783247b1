//! Token resolution (docs/security.md): master → org token → agent token, by SHA-256 of the presented
//! value. Tokens and org modes are cached in memory so a warm call costs no database round trip;
//! the cache is safe to lose and is kept honest by `NOTIFY commguard_identity` (sent by the
//! directory projections when a token is revoked or an org changes mode), by a time-to-live, and
//! by the command paths of this instance, which drop what they revoke before they answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use commguard_domain::values::OrgMode;
use commguard_projections::directory::read;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Principal, Role};
use crate::clock::Clock;
use crate::crypto::tokens::constant_time_eq;

/// A cached entry is re-read after this long even without a notification (a lost notification
/// during a reconnect cannot keep a revoked token alive for longer).
const CACHE_TTL: Duration = Duration::from_secs(30);
/// `lastUsedAt` is written at most this often per token (docs/security.md: ≤ 1 write/min).
const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// How long a revocation waits for every live instance to confirm it (`reach_every_instance`).
const BARRIER_DEADLINE: Duration = Duration::from_secs(2);

/// Why a credential was refused; the `reason` of `AuthFailed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Revoked,
    AgentMismatch,
    SessionMismatch,
    /// The check could not run (database down): refuse, never admit (principle 5, docs/security.md#principles).
    Unavailable,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Revoked => "revoked",
            Self::AgentMismatch => "agent_mismatch",
            Self::SessionMismatch => "session_mismatch",
            Self::Unavailable => "unavailable",
        }
    }
}

#[derive(Clone, Debug)]
struct TokenRecord {
    token_id: Uuid,
    kind: Role,
    agent_id: Option<String>,
    org_id: String,
    revoked: bool,
}

struct Cached<T> {
    value: T,
    at: Instant,
}

impl<T> Cached<T> {
    fn fresh(&self) -> bool {
        self.at.elapsed() < CACHE_TTL
    }
}

pub struct Identity {
    pool: PgPool,
    /// The service clock, for `lastUsedAt`.
    clock: Clock,
    master_digest: Option<[u8; 32]>,
    demo: bool,
    tokens: RwLock<HashMap<String, Cached<TokenRecord>>>,
    org_modes: RwLock<HashMap<String, Cached<Option<OrgMode>>>>,
    /// Moves on every forget: a value read from Postgres before a revocation was applied here is
    /// not cached after it (it would outlive the revocation by up to `CACHE_TTL`).
    generation: AtomicU64,
    /// Whether this instance is listening for identity notifications (`identity_watch`): the
    /// caches are used only while it is, since a change made elsewhere meanwhile would not reach
    /// them. Off until the listener first listens, and whenever it has lost its connection.
    watched: AtomicBool,
    last_used: Mutex<HashMap<Uuid, Instant>>,
}

impl Identity {
    pub fn new(pool: PgPool, master_token: Option<&str>, demo: bool, clock: Clock) -> Self {
        Self {
            pool,
            clock,
            master_digest: master_token.map(|t| Sha256::digest(t.as_bytes()).into()),
            demo,
            tokens: RwLock::default(),
            org_modes: RwLock::default(),
            generation: AtomicU64::new(0),
            watched: AtomicBool::new(false),
            last_used: Mutex::default(),
        }
    }

    /// No master token configured (and not production, which refuses to start that way): a
    /// request without any credential is the super-admin (docs/security.md#development-and-demo-modes).
    pub fn dev_open(&self) -> bool {
        self.master_digest.is_none()
    }

    pub fn demo(&self) -> bool {
        self.demo
    }

    /// The principal of a request that presented no credential, if the mode admits one.
    pub fn anonymous(&self) -> Option<Principal> {
        if self.demo {
            Some(Principal::master("demo"))
        } else if self.dev_open() {
            Some(Principal::master("dev-open"))
        } else {
            None
        }
    }

    /// Resolves a presented token. In demo mode authentication is skipped: an unknown token is
    /// the demo super-admin, and a valid agent token is its agent with super-admin rights.
    pub async fn resolve(&self, presented: &str) -> Result<Principal, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(master) = &self.master_digest {
            if constant_time_eq(&digest, master) {
                return Ok(Principal::master("master"));
            }
        }
        let hash = hex::encode(digest);
        let record = match self.lookup(&hash).await {
            Ok(Some(record)) if !record.revoked => record,
            Ok(_) if self.demo => return Ok(Principal::master("demo")),
            Ok(Some(_)) => return Err(AuthFailure::Revoked),
            Ok(None) => return Err(AuthFailure::Invalid),
            Err(e) => {
                crate::error::log_failure("token lookup failed", &e);
                return Err(AuthFailure::Unavailable);
            }
        };
        let principal = match (record.kind, record.agent_id) {
            (Role::Agent, Some(agent_id)) => Principal {
                kind: Role::Agent,
                actor_id: agent_id.clone(),
                id: agent_id,
                org_id: Some(record.org_id),
                token_id: Some(record.token_id),
                elevated: self.demo,
            },
            _ => Principal {
                kind: Role::Org,
                id: record.org_id.clone(),
                actor_id: record.org_id.clone(),
                org_id: Some(record.org_id),
                token_id: Some(record.token_id),
                elevated: self.demo,
            },
        };
        Ok(principal)
    }

    /// Whether token `token_id` is still active (sessions check the token that opened them).
    pub async fn token_active(&self, token_id: Uuid) -> Result<bool, sqlx::Error> {
        let cached = self
            .tokens
            .read()
            .expect("token cache lock")
            .values()
            .find(|c| c.value.token_id == token_id && self.usable(c))
            .map(|c| !c.value.revoked);
        if let Some(active) = cached {
            return Ok(active);
        }
        let revoked = read::token_revoked(&self.pool, token_id).await?;
        Ok(revoked == Some(false))
    }

    async fn lookup(&self, hash: &str) -> Result<Option<TokenRecord>, sqlx::Error> {
        if let Some(cached) = self.tokens.read().expect("token cache lock").get(hash) {
            if self.usable(cached) {
                return Ok(Some(cached.value.clone()));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = read::token_by_hash(&self.pool, hash).await?;
        crate::outage::DATABASE.succeeded();
        // Unknown hashes are not cached: guessing must not fill memory.
        let Some(row) = row else {
            return Ok(None);
        };
        let kind = if row.agent_token { Role::Agent } else { Role::Org };
        let record = TokenRecord {
            token_id: row.token_id,
            kind,
            agent_id: row.agent_id,
            org_id: row.org_id,
            revoked: row.revoked,
        };
        let mut tokens = self.tokens.write().expect("token cache lock");
        if self.may_cache(generation) {
            tokens.insert(hash.to_string(), Cached { value: record.clone(), at: Instant::now() });
        }
        Ok(Some(record))
    }

    /// The mode of org `org_id` (`None`: no such org), cached like tokens.
    pub async fn org_mode(&self, org_id: &str) -> Result<Option<OrgMode>, sqlx::Error> {
        if let Some(cached) = self.org_modes.read().expect("org cache lock").get(org_id) {
            if self.usable(cached) {
                return Ok(cached.value);
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let mode = read::org_mode(&self.pool, org_id).await?;
        if mode.is_some() {
            let mut modes = self.org_modes.write().expect("org cache lock");
            if self.may_cache(generation) {
                modes.insert(org_id.to_string(), Cached { value: mode, at: Instant::now() });
            }
        }
        Ok(mode)
    }

    /// Drops revoked tokens from the cache (a notification, or this instance's own command).
    pub fn forget_tokens(&self, token_ids: &[Uuid]) {
        let mut tokens = self.tokens.write().expect("token cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        tokens.retain(|_, c| !token_ids.contains(&c.value.token_id));
    }

    pub fn forget_org(&self, org_id: &str) {
        let mut modes = self.org_modes.write().expect("org cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        modes.remove(org_id);
    }

    /// The identity listener listens (`true`, after it has cleared what it may have missed) or
    /// has lost its connection (`false`): until it listens again every lookup reads Postgres,
    /// so a revocation committed elsewhere meanwhile refuses at once here too (fail closed).
    pub fn watch(&self, listening: bool) {
        self.watched.store(listening, Ordering::Release);
        if !listening {
            self.clear();
        }
    }

    /// A cached entry may answer: fresh, and the listener is up.
    fn usable<T>(&self, cached: &Cached<T>) -> bool {
        cached.fresh() && self.watched.load(Ordering::Acquire)
    }

    /// A value read from Postgres at `generation` may be cached: nothing was forgotten since,
    /// and the listener is up. Called under the cache's write lock, which `clear` also takes.
    fn may_cache(&self, generation: u64) -> bool {
        self.watched.load(Ordering::Acquire) && self.generation.load(Ordering::Acquire) == generation
    }

    /// After a lost connection to the notification channel nothing cached can be trusted.
    pub fn clear(&self) {
        let (mut tokens, mut modes) =
            (self.tokens.write().expect("token cache lock"), self.org_modes.write().expect("org cache lock"));
        self.generation.fetch_add(1, Ordering::AcqRel);
        tokens.clear();
        modes.clear();
    }

    /// Records `lastUsedAt` of the principal's token, on the service clock, at most once a minute
    /// per token across every instance (the statement skips a row written less than a minute
    /// earlier; this instance's memory only spares it the statement), off the request path.
    /// Called only for requests that passed authorization (not by `resolve`): a refused request
    /// changes nothing but its own event.
    pub fn touch(&self, principal: &Principal) {
        let Some(token_id) = principal.token_id else { return };
        {
            let mut last = self.last_used.lock().expect("last-used lock");
            if last.get(&token_id).is_some_and(|t| t.elapsed() < LAST_USED_EVERY) {
                return;
            }
            last.insert(token_id, Instant::now());
        }
        let (pool, now) = (self.pool.clone(), self.clock.now());
        tokio::spawn(async move {
            let written = sqlx::query(
                "INSERT INTO token_last_used AS u (token_id, last_used_at) VALUES ($1, $2)
                 ON CONFLICT (token_id) DO UPDATE SET last_used_at = EXCLUDED.last_used_at
                  WHERE u.last_used_at NOT BETWEEN EXCLUDED.last_used_at - make_interval(secs => $3)
                                               AND EXCLUDED.last_used_at",
            )
            .bind(token_id)
            .bind(now)
            .bind(LAST_USED_EVERY.as_secs_f64())
            .execute(&pool)
            .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "lastUsedAt not recorded");
            }
        });
    }
}

/// After an identity change (a revoked token, an org's new mode) is in the directory projections:
/// waits until every live instance — a heartbeat in `service_instances` within `lease` — has read
/// the notifications sent up to now, so that none of them still admits what was revoked (migration
/// 0034). A barrier number goes out on `commguard_identity` after the change's own notification
/// (the projection's commit came first); each instance's listener writes it back in
/// `identity_seen` (`acknowledge`) once it has applied everything before it. Returns how many
/// instances had not confirmed after `BARRIER_DEADLINE` (one whose listener is down): the caller
/// answers anyway, and that instance's cache, cleared when its listener failed, expires within
/// `CACHE_TTL`.
pub async fn reach_every_instance(pool: &PgPool, lease: Duration) -> Result<usize, sqlx::Error> {
    let barrier: i64 = sqlx::query_scalar(
        "SELECT b FROM (SELECT nextval('identity_barriers') AS b) n,
                LATERAL pg_notify($1, json_build_object('barrier', n.b)::text)",
    )
    .bind(commguard_projections::directory::IDENTITY_CHANNEL)
    .fetch_one(pool)
    .await?;
    let deadline = Instant::now() + BARRIER_DEADLINE;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM service_instances
              WHERE identity_seen < $1 AND heartbeat_at > now() - make_interval(secs => $2)",
        )
        .bind(barrier)
        .bind(lease.as_secs_f64())
        .fetch_one(pool)
        .await?;
        if behind == 0 || Instant::now() >= deadline {
            return Ok(behind as usize);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// This instance has applied every identity notification up to barrier `seen` (its listener's
/// side of `reach_every_instance`); `None`: every barrier issued so far, for a listener that has
/// just started listening and cleared its caches.
pub async fn acknowledge(pool: &PgPool, instance: Uuid, seen: Option<i64>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO service_instances AS s (id, identity_seen)
         SELECT $1, coalesce($2, (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM identity_barriers))
         ON CONFLICT (id) DO UPDATE SET identity_seen = greatest(s.identity_seen, EXCLUDED.identity_seen)",
    )
    .bind(instance)
    .bind(seen)
    .execute(pool)
    .await
    .map(|_| ())
}
