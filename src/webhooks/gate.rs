//! The docs/webhooks.md#twilio-routes gate of every webhook, as axum extractors: `TwilioRequest<R>` for Twilio's routes,
//! `ResendRequest` for `/email`. Each runs the steps in order — IP allowlist (marked by the
//! hardening layer), the agent, the signature (failing closed), the replay nonce shared through
//! Postgres — and hands its handler a verified request; every refusal is answered (and, once the
//! agent is known, recorded as `WebhookRejected`) by the extractor. The handler gives the
//! answer back through `settle`, which returns the nonce when it failed (5xx) so the provider's
//! retry is processed rather than refused as a replay; final answers (2xx, 4xx) keep it.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};

use super::replay::{self, Claim};
use super::signature;
use super::{empty, json_error, ok, reject, turned_away};
use crate::directory::{self, AgentView};
use crate::error::{ApiError, ErrorCode};
use crate::http::client_ip::ClientIp;
use crate::http::webhook_routes::{ip_refusal, IpRefused};
use crate::http::RequestId;
use crate::providers::credentials;
use crate::state::AppState;
use crate::store::CommandContext;
use crate::validate;

/// What the signature step decided for a request it let through.
#[derive(Clone, Copy)]
pub enum Signature {
    Verified,
    /// Demo mode: not checked.
    Skipped,
    /// Development without a secret: accepted, marked unverified.
    Unverified,
}

impl Signature {
    pub fn note(&self, context: &mut CommandContext) {
        match self {
            Self::Verified => context.provenance.pass("signature"),
            Self::Skipped => context.provenance.skip("signature", "demo mode"),
            // The event's mark (docs/webhooks.md): its signature check skipped, detail `unverified`.
            Self::Unverified => context.provenance.skip("signature", "unverified"),
        }
    }
}

/// The gate's checks that ran, in order (docs/webhooks.md#twilio-routes): what the provenance of
/// a refusal, or of the handler's event, lists before the check that decided.
#[derive(Clone, Default)]
pub struct Checks {
    /// The request's id (`X-Request-Id`), which its events carry.
    request_id: Option<String>,
    /// `WEBHOOK_IP_ALLOWLIST` is configured and let the request through.
    ip: bool,
    agent: bool,
    signature: Option<Signature>,
    replay: bool,
}

impl Checks {
    fn arrived(app: &AppState, arrival: &Arrival) -> Self {
        Self {
            request_id: arrival.request_id.clone(),
            ip: !app.config.webhook_ip_allowlist.is_empty(),
            ..Self::default()
        }
    }

    /// The context of an event this request causes: the provider as actor, the request's id, and
    /// the gate's checks in its provenance.
    pub fn context(&self, app: &AppState, provider: &str, agent: &AgentView) -> CommandContext {
        let mut context = super::context(app, provider, agent);
        if let Some(id) = &self.request_id {
            context = context.with_request_id(id.clone());
        }
        self.note(&mut context);
        context
    }

    fn note(&self, context: &mut CommandContext) {
        if self.ip {
            context.provenance.pass("ip");
        }
        if self.agent {
            context.provenance.pass("agent");
        }
        if let Some(signature) = &self.signature {
            signature.note(context);
        }
        if self.replay {
            context.provenance.pass("replay");
        }
    }
}

/// A nonce this request claimed (docs/webhooks.md#replay), at `at`.
struct Claimed {
    nonce: String,
    at: DateTime<Utc>,
}

/// After the handler: a failure (5xx) gives the nonce back so the provider's retry is processed;
/// a final answer (2xx, 4xx) keeps it.
async fn settle(app: &AppState, claimed: Option<&Claimed>, response: Response) -> Response {
    if let Some(claimed) = claimed.filter(|_| response.status().is_server_error()) {
        if let Err(e) = replay::release(&app.pool, &claimed.nonce, claimed.at).await {
            tracing::error!(error = %e, nonce = claimed.nonce, "failed webhook's nonce not given back");
        }
    }
    response
}

/// What every webhook request carries before the gate decides: the `:agentId` (checked), the
/// client's IP, whether the allowlist refused it, and the URI it was sent to.
struct Arrival {
    agent_id: Result<String, ApiError>,
    ip: ClientIp,
    ip_refused: bool,
    uri: OriginalUri,
    headers: HeaderMap,
    request_id: Option<String>,
}

impl Arrival {
    async fn of(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let agent_id = agent_param(Path::<String>::from_request_parts(parts, app).await);
        let Extension(ip) =
            Extension::<ClientIp>::from_request_parts(parts, app).await.map_err(IntoResponse::into_response)?;
        let ip_refused = parts.extensions.get::<IpRefused>().is_some();
        let uri = OriginalUri::from_request_parts(parts, app).await.map_err(IntoResponse::into_response)?;
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        Ok(Self { agent_id, ip, ip_refused, uri, headers: parts.headers.clone(), request_id })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The `:agentId` of a webhook route. Unauthenticated callers reach the agent lookup with it, so
/// text Postgres cannot store (U+0000) or that is not UTF-8 is refused first (400: `<Response/>`
/// on Twilio routes, docs/errors.md JSON on `/email`); no agent can have such an id, so nothing is recorded.
fn agent_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(agent_id) =
        param.map_err(|e| ApiError::new(ErrorCode::InvalidInput, format!("Invalid path: {}", e.body_text())))?;
    validate::storable("agentId", &agent_id)?;
    Ok(agent_id)
}

/// Step 1 for a request the allowlist refused: 403, and `WebhookRejected(ip)` if the agent exists.
async fn refuse_ip(app: &AppState, arrival: &Arrival, provider: &str, route: &str) -> Response {
    let path = arrival.uri.0.path();
    let Ok(agent_id) = arrival.agent_id.as_deref() else {
        turned_away(app, route, "ip");
        return ip_refusal(path);
    };
    match directory::agent(&app.pool, agent_id).await {
        Ok(Some(agent)) => {
            let checks = Checks { request_id: arrival.request_id.clone(), ..Checks::default() };
            reject(app, &agent, provider, route, "ip", &arrival.ip, &checks).await
        }
        Ok(None) => turned_away(app, route, "ip"),
        Err(e) => {
            turned_away(app, route, "ip");
            tracing::error!(error = %e.message, agent_id, "IP-refused webhook not recorded: agent lookup failed")
        }
    }
    ip_refusal(path)
}

/// Step 4: the nonce. A replay inside the window → `Claim::Replay`; a nonce seen before the
/// window → `Claim::Stale` (no effect).
async fn claim(app: &AppState, nonce: String) -> Result<(Claim, Claimed), sqlx::Error> {
    let window = app.config.webhook_replay_window_seconds as i64;
    let now = app.clock.now();
    let claim = replay::claim(&app.pool, &nonce, now, window).await?;
    Ok((claim, Claimed { nonce, at: now }))
}

/// One of Twilio's webhook routes: its name, and the nonce key its form makes (docs/webhooks.md#replay).
pub trait TwilioRoute: Send + Sync + 'static {
    const ROUTE: &'static str;
    /// The nonce key, from the form's parameters; `None` when a field it needs is missing.
    fn nonce(form: &Form) -> Option<String>;
}

/// A Twilio form body.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// A non-empty parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

/// A Twilio request through the gate: its agent, form, how its signature was decided, and the
/// nonce it claimed.
pub struct TwilioRequest<R> {
    pub agent: AgentView,
    pub form: Form,
    /// The gate's checks, all passed: the handler's events list them first.
    pub checks: Checks,
    pub ip: ClientIp,
    claimed: Claimed,
    route: PhantomData<R>,
}

impl<R> TwilioRequest<R> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form.param(name)
    }

    /// The handler's answer, its nonce given back on a failure.
    pub async fn settle(&self, app: &AppState, response: Response) -> Response {
        settle(app, Some(&self.claimed), response).await
    }
}

impl<R: TwilioRoute> FromRequest<AppState> for TwilioRequest<R> {
    type Rejection = Response;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, Response> {
        let route = R::ROUTE;
        let (mut parts, body) = request.into_parts();
        let arrival = Arrival::of(&mut parts, app).await?;
        // Step 1, before the body is read: the rate limit and the body limit let it through unread.
        if arrival.ip_refused {
            return Err(refuse_ip(app, &arrival, "twilio", route).await);
        }
        let body =
            Bytes::from_request(Request::from_parts(parts, body), app).await.map_err(IntoResponse::into_response)?;
        let Ok(agent_id) = arrival.agent_id.as_deref() else {
            turned_away(app, route, "malformed");
            return Err(empty(StatusCode::BAD_REQUEST));
        };
        let ip = &arrival.ip;
        let mut checks = Checks::arrived(app, &arrival);
        // Step 2: the agent.
        let agent = directory::agent(&app.pool, agent_id).await.map_err(|_| empty(StatusCode::SERVICE_UNAVAILABLE))?;
        let Some(agent) = agent else {
            turned_away(app, route, "unknown_agent");
            return Err(empty(StatusCode::NOT_FOUND));
        };
        checks.agent = true;
        let form = arrival
            .header(header::CONTENT_TYPE.as_str())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
        if !form {
            reject(app, &agent, "twilio", route, "malformed", ip, &checks).await;
            return Err(empty(StatusCode::BAD_REQUEST));
        }
        let form = Form(form_urlencoded::parse(&body).into_owned().collect());
        // Parameters become nonces and event fields: text Postgres cannot store is malformed.
        if form.0.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
            reject(app, &agent, "twilio", route, "malformed", ip, &checks).await;
            return Err(empty(StatusCode::BAD_REQUEST));
        }
        // Step 3: the signature.
        let signature = if app.config.demo_mode {
            Signature::Skipped
        } else {
            match twilio_auth_token(app, &agent.org_id).await {
                // A verifier that cannot decide fails closed.
                Err(e) => {
                    tracing::error!(error = %e.message, route, agent_id, "Twilio webhook refused: auth token lookup failed");
                    reject(app, &agent, "twilio", route, "signature", ip, &checks).await;
                    return Err(empty(StatusCode::FORBIDDEN));
                }
                Ok(None) if app.config.env.is_production() => {
                    reject(app, &agent, "twilio", route, "secret_missing", ip, &checks).await;
                    return Err(empty(StatusCode::SERVICE_UNAVAILABLE));
                }
                Ok(None) => {
                    tracing::warn!(route, agent_id, "Twilio webhook accepted unverified: no auth token configured");
                    Signature::Unverified
                }
                Ok(Some(token)) => {
                    let base = app.config.webhook_base_url.trim_end_matches('/');
                    let uri = &arrival.uri.0;
                    let url = match uri.query() {
                        Some(query) => format!("{base}{}?{query}", uri.path()),
                        None => format!("{base}{}", uri.path()),
                    };
                    let given = arrival.header("x-twilio-signature");
                    if !given.is_some_and(|g| signature::twilio_valid(&token, &url, &form.0, g)) {
                        reject(app, &agent, "twilio", route, "signature", ip, &checks).await;
                        return Err(empty(StatusCode::FORBIDDEN));
                    }
                    Signature::Verified
                }
            }
        };
        checks.signature = Some(signature);
        // Step 4: the nonce key's fields, then the replay check.
        let Some(nonce) = R::nonce(&form) else {
            reject(app, &agent, "twilio", route, "malformed", ip, &checks).await;
            return Err(empty(StatusCode::BAD_REQUEST));
        };
        let claimed = match claim(app, nonce).await {
            Ok((Claim::Fresh, claimed)) => claimed,
            Ok((Claim::Replay, _)) => {
                reject(app, &agent, "twilio", route, "replay", ip, &checks).await;
                return Err(empty(StatusCode::FORBIDDEN));
            }
            Ok((Claim::Stale, _)) => return Err(empty(StatusCode::OK)),
            Err(e) => {
                tracing::error!(error = %e, "replay nonce not claimed");
                return Err(empty(StatusCode::SERVICE_UNAVAILABLE));
            }
        };
        checks.replay = true;
        Ok(Self { agent, form, checks, ip: arrival.ip, claimed, route: PhantomData })
    }
}

/// The agent's org's effective Twilio auth token (org → platform → environment).
async fn twilio_auth_token(app: &AppState, org_id: &str) -> Result<Option<String>, ApiError> {
    let resolved = credentials::resolve(&app.pool, &app.credential_keys, &app.config, org_id, "twilio").await?;
    Ok(resolved
        .and_then(|c| c.get("authToken").map(str::to_string))
        .or_else(|| app.config.twilio_auth_token.as_ref().map(|s| s.0.clone())))
}

/// A Resend (Svix-signed) request through the gate, verified over its raw body bytes.
pub struct ResendRequest {
    pub agent: AgentView,
    pub body: Bytes,
    /// The gate's checks, all passed: the handler's events list them first.
    pub checks: Checks,
    pub ip: ClientIp,
    /// Replay is checked by `svix-id` whenever one is given (verified requests always have one).
    claimed: Option<Claimed>,
}

impl ResendRequest {
    /// The handler's answer, its nonce (if any) given back on a failure.
    pub async fn settle(&self, app: &AppState, response: Response) -> Response {
        settle(app, self.claimed.as_ref(), response).await
    }
}

impl FromRequest<AppState> for ResendRequest {
    type Rejection = Response;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, Response> {
        const ROUTE: &str = "email";
        let (mut parts, body) = request.into_parts();
        let arrival = Arrival::of(&mut parts, app).await?;
        if arrival.ip_refused {
            return Err(refuse_ip(app, &arrival, "resend", ROUTE).await);
        }
        let body =
            Bytes::from_request(Request::from_parts(parts, body), app).await.map_err(IntoResponse::into_response)?;
        let agent_id = match &arrival.agent_id {
            Ok(agent_id) => agent_id.as_str(),
            Err(refusal) => {
                turned_away(app, ROUTE, "malformed");
                return Err(refusal.clone().into_response());
            }
        };
        let ip = &arrival.ip;
        let mut checks = Checks::arrived(app, &arrival);
        let agent = match directory::agent(&app.pool, agent_id).await {
            Ok(Some(agent)) => agent,
            Ok(None) => {
                turned_away(app, ROUTE, "unknown_agent");
                return Err(json_error(StatusCode::NOT_FOUND, "Agent not found"));
            }
            Err(e) => return Err(e.into_response()),
        };
        checks.agent = true;
        let mut signature = Signature::Skipped;
        if !app.config.demo_mode {
            match svix_secret(app, &agent.org_id).await {
                // A verifier that cannot decide fails closed.
                Err(e) => {
                    tracing::error!(error = %e.message, agent_id, "email webhook refused: secret lookup failed");
                    reject(app, &agent, "resend", ROUTE, "signature", ip, &checks).await;
                    return Err(json_error(StatusCode::FORBIDDEN, "Invalid webhook signature"));
                }
                Ok(None) if app.config.env.is_production() => {
                    reject(app, &agent, "resend", ROUTE, "secret_missing", ip, &checks).await;
                    return Err(json_error(StatusCode::SERVICE_UNAVAILABLE, "Webhook secret is not configured"));
                }
                Ok(None) => {
                    tracing::warn!(agent_id, "email webhook accepted unverified: no webhook secret configured");
                    signature = Signature::Unverified;
                }
                Ok(Some(secret)) => {
                    let given = signature::SvixHeaders {
                        id: arrival.header("svix-id"),
                        timestamp: arrival.header("svix-timestamp"),
                        signature: arrival.header("svix-signature"),
                    };
                    let tolerance = app.config.webhook_replay_window_seconds as i64;
                    if let Err(refusal) =
                        signature::svix_verify(&secret, &given, &body, app.clock.now().timestamp(), tolerance)
                    {
                        reject(app, &agent, "resend", ROUTE, "signature", ip, &checks).await;
                        return Err(json_error(StatusCode::FORBIDDEN, refusal.message()));
                    }
                    signature = Signature::Verified;
                }
            }
        }
        checks.signature = Some(signature);
        let mut claimed = None;
        if let Some(id) = arrival.header("svix-id") {
            match claim(app, format!("svix:{id}")).await {
                Ok((Claim::Fresh, fresh)) => claimed = Some(fresh),
                Ok((Claim::Replay, _)) => {
                    reject(app, &agent, "resend", ROUTE, "replay", ip, &checks).await;
                    return Err(json_error(StatusCode::FORBIDDEN, "Webhook replayed"));
                }
                Ok((Claim::Stale, _)) => return Err(ok()),
                Err(e) => return Err(ApiError::internal(e).into_response()),
            }
        }
        checks.replay = claimed.is_some();
        Ok(Self { agent, body, checks, ip: arrival.ip, claimed })
    }
}

/// The effective Svix secret: the org's registered Resend `webhookSecret`, else the platform's,
/// else `RESEND_WEBHOOK_SECRET`.
async fn svix_secret(app: &AppState, org_id: &str) -> Result<Option<String>, ApiError> {
    let env = app.config.resend_webhook_secret.as_ref().map(|s| s.0.as_str());
    credentials::resolve_optional(&app.pool, &app.credential_keys, org_id, "resend", "webhookSecret", env).await
}
