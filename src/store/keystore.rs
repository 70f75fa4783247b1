//! The key store behind crypto-shredding (docs/privacy.md#keys-and-crypto-shredding): subject keys per (org, subjectRef,
//! generation), retention keys per (class, UTC day), consent-record keys per grant. Keys live in
//! Postgres wrapped by the KEK, so every instance shares them; destroying one is final.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use commguard_domain::pii::RetentionClass;
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::{DataKeys, Key};

/// A map keyed by key ids (UUIDs this service makes, not chosen by callers): foldhash, not
/// SipHash, since the feed hashes a few ids per event.
pub type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("a stored key could not be unwrapped: {0}")]
    Unwrap(String),
}

#[derive(Clone)]
pub struct KeyStore {
    pool: PgPool,
    keys: Arc<DataKeys>,
    live: Arc<LiveKeys>,
    opened: FieldKeys,
}

/// What a new key is for; also the row that identifies it.
enum KeyFor<'a> {
    Subject { org_id: &'a str, subject_ref: &'a str },
    Retention { class: RetentionClass, day: NaiveDate },
    Consent { consent_id: Uuid },
}

impl KeyFor<'_> {
    /// Subject and retention keys are looked up on every sealed event (a send seals its
    /// recipient and body), so they are cached; consent keys are used once per grant.
    fn cache_key(&self) -> Option<String> {
        match self {
            KeyFor::Subject { org_id, subject_ref } => Some(format!("s|{org_id}|{subject_ref}")),
            KeyFor::Retention { class, day } => Some(format!("r|{}|{day}", class.as_str())),
            KeyFor::Consent { .. } => None,
        }
    }
}

/// Live keys this instance used lately: a cache that is safe to lose. An entry lives
/// `LIVE_KEY_TTL` at most, and destroying keys here drops the entries it may concern at once.
///
/// A cached **subject** key is never used on trust: every hit is checked against Postgres before
/// what it seals is stored, because another instance may have erased the subject a moment ago,
/// and its notice (`identity_watch`) reaches this cache asynchronously. Either here, by primary
/// key (`still_live`, `subject_key`), or — sparing a round trip per event — by the statement that
/// stores the sealed event (`subject_key_deferred`: `append_batch` refuses with `CG002` when a key
/// its events were sealed under is gone, and the append is sealed again). Both read committed
/// state after the seal began, so a seal that starts after an erasure's reply can only be stored
/// under the next generation, whatever this instance has heard (ARCHITECTURE: erasure). Retention
/// keys are not checked: a run destroys only days before today − N, never the bucket of a new event.
#[derive(Default)]
struct LiveKeys {
    entries: RwLock<HashMap<String, (Uuid, Key, Instant)>>,
}

const LIVE_KEY_TTL: Duration = Duration::from_secs(30);
const LIVE_KEY_CAPACITY: usize = 100_000;

impl LiveKeys {
    fn get(&self, key: &str) -> Option<(Uuid, Key)> {
        let entries = self.entries.read().expect("key cache lock");
        entries.get(key).filter(|(_, _, at)| at.elapsed() < LIVE_KEY_TTL).map(|(id, k, _)| (*id, *k))
    }

    fn put(&self, key: String, found: (Uuid, Key)) {
        let mut entries = self.entries.write().expect("key cache lock");
        if entries.len() >= LIVE_KEY_CAPACITY {
            entries.clear();
        }
        entries.insert(key, (found.0, found.1, Instant::now()));
    }

    fn forget(&self, prefix: &str) {
        self.entries.write().expect("key cache lock").retain(|k, _| !k.starts_with(prefix));
    }
}

/// What opening sealed fields can reuse across pages: keys unwrapped from their stored rows,
/// and field keys derived from them (`envelope::field_key`, HKDF). A memo that is safe to lose,
/// and never an answer to *whether* a key lives: every page still asks Postgres which of its
/// keys are live (`KeyStore::for_opening`, one query), and a field opens only when all its keys
/// were live in that answer. A key id's bytes never change (a row is written once, and
/// destroying it only empties it), so what the memo holds for an id is what an unwrap of its
/// row would give.
///
/// Bounded (`OPENED_CAPACITY` entries, cleared when full) and short-lived (`OPENED_TTL`), so the
/// bytes of a destroyed key do not stay in memory: destroying keys here clears it at once, and
/// so does an erasure on any instance (`identity_watch` → `forget_subject_keys`).
#[derive(Clone, Default)]
pub(crate) struct FieldKeys {
    inner: Arc<FieldKeysInner>,
}

#[derive(Default)]
struct FieldKeysInner {
    unwrapped: Mutex<IdMap<Uuid, (Key, Instant)>>,
    derived: Mutex<IdMap<Vec<Uuid>, (Key, Instant)>>,
}

const OPENED_TTL: Duration = Duration::from_secs(30);
const OPENED_CAPACITY: usize = 65_536;

/// Whether a memo entry made `at` is still to be used at `now`.
fn fresh(at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(at) < OPENED_TTL
}

impl FieldKeys {
    /// The keys among `ids` unwrapped lately, as of `now` (whether they still live is not known
    /// here).
    fn kept(&self, ids: &[Uuid], now: Instant) -> IdMap<Uuid, Key> {
        let memo = self.inner.unwrapped.lock().expect("opening memo lock");
        ids.iter().filter_map(|id| memo.get(id).filter(|(_, at)| fresh(*at, now)).map(|(key, _)| (*id, *key))).collect()
    }

    fn keep(&self, id: Uuid, key: Key) {
        let mut memo = self.inner.unwrapped.lock().expect("opening memo lock");
        if memo.len() >= OPENED_CAPACITY {
            memo.clear();
        }
        memo.insert(id, (key, Instant::now()));
    }

    /// The field key of the live keys `ids`, derived by `derive` unless kept as of `now` (a
    /// page's keys are read once, at one instant: no clock read per field).
    pub(crate) fn get_or_derive(&self, ids: &[Uuid], now: Instant, derive: impl FnOnce() -> Key) -> Key {
        if let Some((key, at)) = self.inner.derived.lock().expect("opening memo lock").get(ids) {
            if fresh(*at, now) {
                return *key;
            }
        }
        let key = derive();
        let mut memo = self.inner.derived.lock().expect("opening memo lock");
        if memo.len() >= OPENED_CAPACITY {
            memo.clear();
        }
        memo.insert(ids.to_vec(), (key, Instant::now()));
        key
    }

    fn forget(&self) {
        self.inner.unwrapped.lock().expect("opening memo lock").clear();
        self.inner.derived.lock().expect("opening memo lock").clear();
    }
}

impl KeyStore {
    pub fn new(pool: PgPool, keys: Arc<DataKeys>) -> Self {
        Self { pool, keys, live: Arc::default(), opened: FieldKeys::default() }
    }

    pub fn data_keys(&self) -> &DataKeys {
        &self.keys
    }

    /// The live key of a subject in an organization, made on first use. After erasure the next
    /// call makes the next generation.
    pub async fn subject_key(&self, org_id: &str, subject_ref: &str) -> Result<(Uuid, Key), KeyStoreError> {
        Ok(self.get_or_create(KeyFor::Subject { org_id, subject_ref }, true).await?.0)
    }

    /// `subject_key`, without the round trip that checks a cached key: with it comes the id of
    /// a key taken from this instance's cache unchecked (`None` when it was read from Postgres just
    /// now). What it seals may be stored only by a statement that checks that this key still
    /// lives (`append_batch`'s `e_keys`), or be something that reads `[erased]` harmlessly if it did not.
    pub async fn subject_key_deferred(
        &self,
        org_id: &str,
        subject_ref: &str,
    ) -> Result<((Uuid, Key), Option<Uuid>), KeyStoreError> {
        let (key, unchecked) = self.get_or_create(KeyFor::Subject { org_id, subject_ref }, false).await?;
        Ok((key, unchecked.then_some(key.0)))
    }

    pub async fn retention_key(&self, class: RetentionClass, day: NaiveDate) -> Result<(Uuid, Key), KeyStoreError> {
        Ok(self.get_or_create(KeyFor::Retention { class, day }, true).await?.0)
    }

    pub async fn consent_key(&self, consent_id: Uuid) -> Result<(Uuid, Key), KeyStoreError> {
        Ok(self.get_or_create(KeyFor::Consent { consent_id }, true).await?.0)
    }

    /// The live keys among `ids`; destroyed or unknown ids are simply absent.
    pub async fn lookup(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Key>, KeyStoreError> {
        let rows: Vec<(Uuid, Vec<u8>)> =
            sqlx::query_as("SELECT key_id, wrapped FROM data_keys WHERE key_id = ANY($1) AND wrapped IS NOT NULL")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(|(id, wrapped)| Ok((id, self.unwrap(&wrapped, id)?))).collect()
    }

    /// For opening sealed fields (the feed, exports): the live keys among `ids`, and the kind of
    /// each destroyed one (a redaction says whether erasure or retention destroyed it), in one
    /// query. Postgres answers which keys live, every time; a key unwrapped lately (`FieldKeys`)
    /// is not sent again, only named: the query returns the rows of destroyed keys and of keys
    /// not kept. Unknown ids are in neither map.
    pub async fn for_opening(
        &self,
        ids: &[Uuid],
        now: Instant,
    ) -> Result<(IdMap<Uuid, Key>, IdMap<Uuid, String>), KeyStoreError> {
        let kept: IdMap<Uuid, Key> = self.opened.kept(ids, now);
        let (kept_ids, other_ids): (Vec<Uuid>, Vec<Uuid>) = ids.iter().partition(|id| kept.contains_key(id));
        // Joined with the ids, never `<> ALL` (a scan of the array for every row: a page of
        // 1,000 kept keys cost Postgres 4 ms, as much as reading the page itself) nor `= ANY`
        // (planned afresh for every page, 0.6 ms of estimates for 1,000 ids).
        let rows: Vec<(Uuid, String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT d.key_id, d.kind, d.wrapped FROM unnest($1::uuid[]) AS i(id) JOIN data_keys d ON d.key_id = i.id
             UNION ALL
             SELECT d.key_id, d.kind, NULL FROM unnest($2::uuid[]) AS i(id) JOIN data_keys d ON d.key_id = i.id
              WHERE d.wrapped IS NULL",
        )
        .bind(&other_ids)
        .bind(&kept_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut destroyed: IdMap<Uuid, String> = IdMap::default();
        let mut live: IdMap<Uuid, Key> = IdMap::with_capacity_and_hasher(ids.len(), Default::default());
        for (id, kind, wrapped) in rows {
            match wrapped {
                Some(wrapped) => {
                    let key = self.unwrap(&wrapped, id)?;
                    self.opened.keep(id, key);
                    live.insert(id, key);
                }
                None => {
                    destroyed.insert(id, kind);
                }
            }
        }
        live.extend(kept.into_iter().filter(|(id, _)| !destroyed.contains_key(id)));
        Ok((live, destroyed))
    }

    /// The memo of field keys that opening shares across pages (see `FieldKeys`).
    pub(crate) fn field_keys(&self) -> FieldKeys {
        self.opened.clone()
    }

    /// The kind (`subject`, `retention`, `consent`) of each known key id, live or destroyed.
    pub async fn kinds(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, String>, KeyStoreError> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT key_id, kind FROM data_keys WHERE key_id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Destroys every generation of a subject's key, in one organization or in all of them.
    /// Returns how many live keys were destroyed.
    pub async fn destroy_subject(&self, org_id: Option<&str>, subject_ref: &str) -> Result<u64, KeyStoreError> {
        let mut conn = self.pool.acquire().await?;
        self.destroy_subject_in(&mut conn, org_id, subject_ref).await
    }

    /// `destroy_subject` inside the caller's transaction (erasure destroys keys and purges rows in
    /// one commit). This instance's cached subject keys are dropped at once; should the
    /// transaction roll back, they are simply read again.
    pub async fn destroy_subject_in(
        &self,
        conn: &mut sqlx::PgConnection,
        org_id: Option<&str>,
        subject_ref: &str,
    ) -> Result<u64, KeyStoreError> {
        let done = sqlx::query(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = now()
             WHERE kind = 'subject' AND subject_ref = $1 AND ($2::text IS NULL OR org_id = $2)
               AND destroyed_at IS NULL",
        )
        .bind(subject_ref)
        .bind(org_id)
        .execute(&mut *conn)
        .await?;
        self.live.forget("s|");
        self.opened.forget();
        Ok(done.rows_affected())
    }

    /// Destroys the consent-record keys of the grants `consent_ids`. Returns how many live keys
    /// were destroyed.
    pub async fn destroy_consents(&self, consent_ids: &[Uuid]) -> Result<u64, KeyStoreError> {
        let mut conn = self.pool.acquire().await?;
        let destroyed = Self::destroy_consents_in(&mut conn, consent_ids).await;
        self.opened.forget();
        destroyed
    }

    /// `destroy_consents` inside the caller's transaction.
    pub async fn destroy_consents_in(
        conn: &mut sqlx::PgConnection,
        consent_ids: &[Uuid],
    ) -> Result<u64, KeyStoreError> {
        let done = sqlx::query(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = now()
             WHERE kind = 'consent' AND consent_id = ANY($1) AND destroyed_at IS NULL",
        )
        .bind(consent_ids)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }

    /// Drops every cached subject key of this instance: another instance destroyed one (its
    /// notice arrived through `identity_watch`), so the next seal reads the live generation again.
    pub fn forget_subject_keys(&self) {
        self.live.forget("s|");
        self.opened.forget();
    }

    /// Destroys the retention keys of a class for every day before `before`.
    pub async fn destroy_retention(&self, class: RetentionClass, before: NaiveDate) -> Result<u64, KeyStoreError> {
        let done = sqlx::query(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = now()
             WHERE kind = 'retention' AND retention_class = $1 AND bucket < $2 AND destroyed_at IS NULL",
        )
        .bind(class.as_str())
        .bind(before)
        .execute(&self.pool)
        .await?;
        self.live.forget(&format!("r|{}|", class.as_str()));
        self.opened.forget();
        Ok(done.rows_affected())
    }

    /// The live key for `purpose`, and whether it is a cached subject key left unchecked
    /// (only when `check` is false; see `LiveKeys`).
    async fn get_or_create(&self, purpose: KeyFor<'_>, check: bool) -> Result<((Uuid, Key), bool), KeyStoreError> {
        let cache_key = purpose.cache_key();
        if let Some(found) = cache_key.as_deref().and_then(|k| self.live.get(k)) {
            let subject = matches!(purpose, KeyFor::Subject { .. });
            if subject && !check {
                return Ok((found, true));
            }
            if !subject || self.still_live(found.0).await? {
                return Ok((found, false));
            }
            // Destroyed elsewhere (an erasure on another instance): forget it, read the live one.
            self.live.forget(cache_key.as_deref().unwrap_or_default());
        }
        // Two rounds at most: a concurrent creator may win the insert; then we read its key.
        for _ in 0..3 {
            if let Some(found) = self.find_live(&purpose).await? {
                if let Some(k) = cache_key {
                    self.live.put(k, found);
                }
                return Ok((found, false));
            }
            self.insert(&purpose).await?;
        }
        let found = self
            .find_live(&purpose)
            .await?
            .ok_or_else(|| KeyStoreError::Unwrap("a new key was destroyed before first use".into()))?;
        Ok((found, false))
    }

    /// Whether key `key_id` still exists: one primary-key probe, no unwrap.
    async fn still_live(&self, key_id: Uuid) -> Result<bool, KeyStoreError> {
        let live: Option<i32> = sqlx::query_scalar("SELECT 1 FROM data_keys WHERE key_id = $1 AND wrapped IS NOT NULL")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(live.is_some())
    }

    async fn find_live(&self, purpose: &KeyFor<'_>) -> Result<Option<(Uuid, Key)>, KeyStoreError> {
        let row: Option<(Uuid, Vec<u8>)> = match purpose {
            KeyFor::Subject { org_id, subject_ref } => {
                sqlx::query_as(
                    "SELECT key_id, wrapped FROM data_keys
                     WHERE kind = 'subject' AND org_id = $1 AND subject_ref = $2 AND wrapped IS NOT NULL",
                )
                .bind(org_id)
                .bind(subject_ref)
                .fetch_optional(&self.pool)
                .await?
            }
            KeyFor::Retention { class, day } => {
                sqlx::query_as(
                    "SELECT key_id, wrapped FROM data_keys
                     WHERE kind = 'retention' AND retention_class = $1 AND bucket = $2 AND wrapped IS NOT NULL",
                )
                .bind(class.as_str())
                .bind(day)
                .fetch_optional(&self.pool)
                .await?
            }
            KeyFor::Consent { consent_id } => {
                sqlx::query_as(
                    "SELECT key_id, wrapped FROM data_keys
                     WHERE kind = 'consent' AND consent_id = $1 AND wrapped IS NOT NULL",
                )
                .bind(consent_id)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.map(|(id, wrapped)| Ok((id, self.unwrap(&wrapped, id)?))).transpose()
    }

    async fn insert(&self, purpose: &KeyFor<'_>) -> Result<(), KeyStoreError> {
        let key_id = Uuid::new_v4();
        let wrapped = self.keys.wrap(&DataKeys::new_key(), key_id);
        // ON CONFLICT DO NOTHING covers every partial unique index: a racing creator wins and
        // both then read the same key. A retention or consent key destroyed earlier stays
        // destroyed: its unique row blocks a new one, so late writes cannot resurrect the class.
        let query = match purpose {
            KeyFor::Subject { org_id, subject_ref } => sqlx::query(
                "INSERT INTO data_keys (key_id, kind, org_id, subject_ref, generation, wrapped)
                 SELECT $1, 'subject', $2, $3, COALESCE(MAX(generation), 0) + 1, $4
                 FROM data_keys WHERE kind = 'subject' AND org_id = $2 AND subject_ref = $3
                 ON CONFLICT DO NOTHING",
            )
            .bind(key_id)
            .bind(*org_id)
            .bind(*subject_ref)
            .bind(wrapped),
            KeyFor::Retention { class, day } => sqlx::query(
                "INSERT INTO data_keys (key_id, kind, retention_class, bucket, wrapped)
                 VALUES ($1, 'retention', $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(key_id)
            .bind(class.as_str())
            .bind(*day)
            .bind(wrapped),
            KeyFor::Consent { consent_id } => sqlx::query(
                "INSERT INTO data_keys (key_id, kind, consent_id, wrapped)
                 VALUES ($1, 'consent', $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(key_id)
            .bind(*consent_id)
            .bind(wrapped),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    fn unwrap(&self, wrapped: &[u8], key_id: Uuid) -> Result<Key, KeyStoreError> {
        self.keys.unwrap(wrapped, key_id).map_err(|e| KeyStoreError::Unwrap(e.to_string()))
    }
}

/// The key store's database errors, for `ApiError::internal` (`unavailable` when it is down).
impl crate::error::Failure for KeyStoreError {
    fn database_down(&self) -> bool {
        match self {
            Self::Database(e) => crate::error::is_outage(e),
            Self::Unwrap(_) => false,
        }
    }
}
