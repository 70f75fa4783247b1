//! MCP sessions (docs/mcp.md#sessions): bound to the principal that opened them, kept in the opening
//! instance's memory, capped per instance, recorded as `SessionOpened` / `SessionClosed`, and
//! closed when their token is revoked, their agent deprovisioned or their org suspended.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use commguard_domain::records::SessionEvent;
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};
use uuid::Uuid;

use crate::auth::caller::Transport;
use crate::auth::Principal;
use crate::clock::Clock;
use crate::error::{ApiError, ErrorCode};
use crate::store::{CommandContext, Store};

pub struct Session {
    pub id: String,
    pub principal: Principal,
    /// The agent claimed at open: the tools' default `agentId`.
    pub claim: Option<String>,
    pub transport: Transport,
    /// The negotiated protocol version, set by `initialize`.
    pub protocol: RwLock<Option<String>>,
    /// Messages for the client's event stream (the SSE stream of `/sse`, or `GET /mcp`).
    outbox: mpsc::UnboundedSender<Value>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    closed: watch::Sender<bool>,
    /// Moves when a new `GET /mcp` stream takes the inbox over: the stream holding it ends.
    takeovers: watch::Sender<u64>,
    /// Told when a stream gives the inbox back.
    given_back: Notify,
    last_seen: Mutex<Instant>,
}

impl Session {
    /// Queues a message for the client's event stream (dropped if no stream is open: on `/mcp`
    /// replies travel in the POST response, so the stream only carries server notifications).
    pub fn send(&self, message: Value) {
        let _ = self.outbox.send(message);
    }

    /// The receiving end of the outbox, for the one stream that may drain it.
    pub fn take_inbox(&self) -> Option<mpsc::UnboundedReceiver<Value>> {
        self.inbox.lock().expect("session inbox lock").take()
    }

    /// Whether a stream holds the inbox (a `GET /mcp` or `/sse` stream is open).
    fn streaming(&self) -> bool {
        self.inbox.lock().expect("session inbox lock").is_none()
    }

    /// The inbox back from a stream that ended without ending the session (`GET /mcp`).
    pub fn give_back_inbox(&self, inbox: mpsc::UnboundedReceiver<Value>) {
        {
            let mut slot = self.inbox.lock().expect("session inbox lock");
            if slot.is_none() {
                *slot = Some(inbox);
            }
        }
        self.given_back.notify_waiters();
    }

    /// The inbox for a new `GET /mcp` stream: the newest stream wins (a client that reconnects
    /// gets its stream at once, though the old connection's end may not have been noticed yet).
    /// The stream holding it is told to end and gives it back; `None` if it has not within
    /// `within` (its connection stuck in a write).
    pub async fn take_over_inbox(&self, within: Duration) -> Option<mpsc::UnboundedReceiver<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so a give-back between the two is not missed.
            let given_back = self.given_back.notified();
            if let Some(inbox) = self.take_inbox() {
                return Some(inbox);
            }
            self.takeovers.send_modify(|n| *n += 1);
            if tokio::time::timeout_at(deadline, given_back).await.is_err() {
                return None;
            }
        }
    }

    /// Resolves when a newer stream takes the inbox over (from the moment of the call).
    pub fn takeovers(&self) -> watch::Receiver<u64> {
        self.takeovers.subscribe()
    }

    /// Resolves when the session is closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub fn touch(&self) {
        *self.last_seen.lock().expect("session clock lock") = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen.lock().expect("session clock lock").elapsed()
    }
}

/// Why a session was not opened.
#[derive(Debug)]
pub enum NotOpened {
    /// The session cap was reached (docs/configuration.md `MCP_MAX_SESSIONS`: 503).
    Full,
    /// `SessionOpened` could not be recorded (the database is down): a session nobody can
    /// audit is not opened (fail closed; every open is recorded).
    Unrecorded,
}

impl From<NotOpened> for ApiError {
    fn from(why: NotOpened) -> Self {
        match why {
            NotOpened::Full => ApiError::new(ErrorCode::Unavailable, "Too many sessions"),
            NotOpened::Unrecorded => ApiError::unrecorded(),
        }
    }
}

pub struct Sessions {
    map: RwLock<HashMap<String, Arc<Session>>>,
    max: usize,
    idle: Duration,
    store: Store,
    clock: Clock,
}

impl Sessions {
    pub fn new(max: usize, idle: Duration, store: Store, clock: Clock) -> Self {
        Self { map: RwLock::default(), max, idle, store, clock }
    }

    /// Opens a session and records `SessionOpened`. Ids are UUIDs on `/sse` and 32 hex on `/mcp`
    /// (docs/mcp.md#legacy-httpsse, docs/mcp.md#streamable-http).
    pub async fn open(
        &self,
        principal: Principal,
        claim: Option<String>,
        transport: Transport,
        context: CommandContext,
    ) -> Result<Arc<Session>, NotOpened> {
        let (outbox, inbox) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            id: match transport {
                Transport::Sse => Uuid::new_v4().to_string(),
                Transport::Streamable => Uuid::new_v4().simple().to_string(),
            },
            principal,
            claim,
            transport,
            protocol: RwLock::new(None),
            outbox,
            inbox: Mutex::new(Some(inbox)),
            closed: watch::channel(false).0,
            takeovers: watch::channel(0).0,
            given_back: Notify::new(),
            last_seen: Mutex::new(Instant::now()),
        });
        {
            let mut map = self.map.write().expect("sessions lock");
            if map.len() >= self.max {
                return Err(NotOpened::Full);
            }
            map.insert(session.id.clone(), session.clone());
        }
        let opened = SessionEvent::SessionOpened {
            session_id: session.id.clone(),
            transport: transport.as_str().into(),
            claimed_agent_id: session.claim.clone(),
        };
        if let Err(e) = self.store.record("principal", &session.principal.stream_id(), &[opened], &context).await {
            crate::error::log_failure("SessionOpened not recorded; the session is not opened", &e);
            self.map.write().expect("sessions lock").remove(&session.id);
            return Err(NotOpened::Unrecorded);
        }
        Ok(session)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map.read().expect("sessions lock").get(id).cloned()
    }

    pub fn count(&self) -> usize {
        self.map.read().expect("sessions lock").len()
    }

    /// The tokens, orgs and agents (principal or claim) the open sessions are bound to, each once.
    pub fn bound(&self) -> (Vec<Uuid>, Vec<String>, Vec<String>) {
        let (mut tokens, mut orgs, mut agents) = (HashSet::new(), HashSet::new(), HashSet::new());
        for session in self.map.read().expect("sessions lock").values() {
            tokens.extend(session.principal.token_id);
            orgs.extend(session.principal.org_id.clone());
            agents.extend(session.principal.agent_id().map(str::to_string));
            agents.extend(session.claim.clone());
        }
        (tokens.into_iter().collect(), orgs.into_iter().collect(), agents.into_iter().collect())
    }

    /// Closes one session (idempotent) and records `SessionClosed`.
    pub async fn close(&self, id: &str, reason: &str) {
        let Some(session) = self.map.write().expect("sessions lock").remove(id) else {
            return;
        };
        session.closed.send_replace(true);
        let closed = SessionEvent::SessionClosed { session_id: session.id.clone(), reason: reason.into() };
        let context = CommandContext::new(session.principal.actor(), session.transport.as_str(), self.clock.now());
        let context = match &session.principal.org_id {
            Some(org) => context.in_org(org.clone()),
            None => context,
        };
        if let Err(e) = self.store.record("principal", &session.principal.stream_id(), &[closed], &context).await {
            crate::error::log_failure("SessionClosed not recorded", &e);
        }
    }

    /// Closes every session matching `which`.
    pub async fn close_where(&self, which: impl Fn(&Session) -> bool, reason: &str) -> usize {
        let ids: Vec<String> =
            self.map.read().expect("sessions lock").values().filter(|s| which(s)).map(|s| s.id.clone()).collect();
        for id in &ids {
            self.close(id, reason).await;
        }
        ids.len()
    }

    pub async fn close_tokens(&self, token_ids: &[Uuid], reason: &str) -> usize {
        self.close_where(|s| s.principal.token_id.is_some_and(|t| token_ids.contains(&t)), reason).await
    }

    pub async fn close_agent(&self, agent_id: &str, reason: &str) -> usize {
        self.close_where(|s| s.principal.agent_id() == Some(agent_id) || s.claim.as_deref() == Some(agent_id), reason)
            .await
    }

    pub async fn close_org(&self, org_id: &str, reason: &str) -> usize {
        self.close_where(|s| s.principal.org_id.as_deref() == Some(org_id), reason).await
    }

    /// Ends Streamable HTTP sessions idle for longer than `MCP_SESSION_IDLE_SECONDS`. Legacy SSE
    /// sessions live as long as their stream.
    pub async fn expire_idle(&self) -> usize {
        let idle = self.idle;
        // A client listening on its notification stream is using the session.
        self.close_where(|s| s.transport == Transport::Streamable && !s.streaming() && s.idle_for() > idle, "idle")
            .await
    }

    /// Closes everything (shutdown).
    pub async fn close_all(&self, reason: &str) -> usize {
        self.close_where(|_| true, reason).await
    }
}
