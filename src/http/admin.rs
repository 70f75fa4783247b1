//! The admin API's gate (docs/admin-api.md): the `Admin` extractor (lockout, bearer, org or master
//! token, never an agent token) that every admin handler takes, `ScopedAgent` for routes on one
//! agent (`:agentId`, addressable by the caller), and the middleware that records each refusal of
//! an authenticated admin caller as `ActionRefused`.

use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;

use crate::auth::{bearer, guard, AuthFailure, Bearer, Principal, Role};
use crate::crypto::tokens::fingerprint;
use crate::directory::commands::addressable_agent;
use crate::directory::AgentView;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::extract::Path;
use crate::http::{ClientIp, RequestId};
use crate::state::AppState;
use crate::store::CommandContext;

/// Where the `Admin` extractor leaves the caller, so refusals can be recorded after the handler.
#[derive(Clone, Default)]
struct CallerSlot(Arc<Mutex<Option<Principal>>>);

/// Records every refused admin request of an authenticated caller as `ActionRefused` (
/// docs/tools.md#common-rules, invariant 2) — extractor rejections included, which are docs/errors.md JSON (`http::extract`).
/// Authentication failures are recorded by the lockout as `AuthFailed`. Only a request that was
/// not refused marks its token used (`lastUsedAt`): a refusal changes nothing but its own event.
pub async fn record_refusals(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let slot = CallerSlot::default();
    request.extensions_mut().insert(slot.clone());
    let route = format!("{} {}", request.method(), request.uri().path());
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
    // The body is already buffered (at most 1 MiB, `body_limit`): keep a copy for `args`.
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, crate::http::body_limit::MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let refusal = ApiError::new(ErrorCode::InvalidInput, format!("Invalid request body: {e}"));
            return axum::response::IntoResponse::into_response(refusal);
        }
    };
    let args = request_args(parts.uri.query(), &bytes);
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let response = next.run(request).await;
    let principal = slot.0.lock().expect("caller slot lock").take();
    let Some(principal) = principal else { return response };
    match response.extensions().get::<ErrorBody>() {
        Some(ErrorBody(refusal)) => {
            let mut context = CommandContext::new(principal.actor(), "admin-api", app.clock.now());
            if let Some(id) = request_id {
                context = context.with_request_id(id);
            }
            if let Some(org) = &principal.org_id {
                context = context.in_org(org.clone());
            }
            if let Some(unrecorded) =
                crate::refusals::record(&app, &principal, context, &route, None, args.as_ref(), refusal).await
            {
                return axum::response::IntoResponse::into_response(unrecorded);
            }
        }
        None if response.status().is_success() => app.identity.touch(&principal),
        None => {}
    }
    response
}

/// The arguments of an admin request, for `ActionRefused.args`: its JSON body when it is an object
/// (whose secrets `refusals::sealed_args` drops and whose identifiers it seals under their
/// subjects), else its query parameters as an object, else none. A body that is not a JSON object
/// is kept as its size only: unparsed, its secrets and identifiers could not be told apart from the
/// rest (a mistyped provider registration would have stored its token, readable in the feed).
fn request_args(query: Option<&str>, body: &[u8]) -> Option<serde_json::Value> {
    use serde_json::Value;
    if !body.is_empty() {
        return Some(match serde_json::from_slice(body) {
            Ok(object @ Value::Object(_)) => object,
            _ => serde_json::json!({ "unparsedBytes": body.len() }),
        });
    }
    let query = query.filter(|q| !q.is_empty())?;
    let params: serde_json::Map<String, Value> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    Some(Value::Object(params))
}

/// An authenticated admin caller (O or S) and the context its commands carry.
pub struct Admin {
    pub principal: Principal,
    pub context: CommandContext,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ip = parts.extensions.get::<ClientIp>().map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0);
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let route = "/admin/api";
        app.lockout.gate(ip, route).await?;
        let missing = || ApiError::new(ErrorCode::Unauthorized, "Missing Authorization header. Use: Bearer <token>");
        let principal = match bearer(&parts.headers) {
            Bearer::Absent => match app.identity.anonymous() {
                Some(p) => p,
                None => {
                    app.lockout.fail(ip, AuthFailure::Missing, route, None, None).await?;
                    return Err(missing());
                }
            },
            Bearer::Malformed => {
                app.lockout.fail(ip, AuthFailure::Missing, route, None, None).await?;
                return Err(missing());
            }
            Bearer::Token(token) => match app.identity.resolve(&token).await {
                // A valid agent token is not an admin credential; it is not a guess either.
                Ok(p) if p.role() == Role::Agent => {
                    return Err(ApiError::new(ErrorCode::Unauthorized, "Invalid admin token"))
                }
                Ok(p) => {
                    app.lockout.succeed(ip, route).await?;
                    p
                }
                Err(AuthFailure::Unavailable) => {
                    return Err(ApiError::new(ErrorCode::Unavailable, "Service unavailable"))
                }
                Err(failure) => {
                    app.lockout.fail(ip, failure, route, Some(&fingerprint(&token)), None).await?;
                    return Err(ApiError::new(ErrorCode::Unauthorized, "Invalid admin token"));
                }
            },
        };
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            *slot.0.lock().expect("caller slot lock") = Some(principal.clone());
        }
        let mut context =
            CommandContext::new(principal.actor(), "admin-api", app.clock.now()).with_request_id(request_id);
        if let Some(org) = &principal.org_id {
            context = context.in_org(org.clone());
        }
        // Mutations run after their handler's role and input checks; both are recorded as passed.
        context.provenance.pass("role");
        context.provenance.pass("input");
        Ok(Self { principal, context })
    }
}

/// An admin caller and the agent of the route's `:agentId`, which the caller may address (Z1,
/// Z2): it exists, and is in the caller's org unless the caller is the super-admin. `R` is the
/// least role the route takes, checked before the agent is looked up.
pub struct ScopedAgent<R: LeastRole = AnyAdmin> {
    pub admin: Admin,
    pub agent: AgentView,
    least: PhantomData<R>,
}

/// The least role an agent route takes.
pub trait LeastRole: Send + Sync + 'static {
    const ROLE: Option<Role>;
}

/// Any admin caller (an org token or the master token).
pub struct AnyAdmin;

impl LeastRole for AnyAdmin {
    const ROLE: Option<Role> = None;
}

/// The super-admin only (the master token).
pub struct SuperAdminOnly;

impl LeastRole for SuperAdminOnly {
    const ROLE: Option<Role> = Some(Role::SuperAdmin);
}

impl<R: LeastRole> FromRequestParts<AppState> for ScopedAgent<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let admin = Admin::from_request_parts(parts, app).await?;
        if let Some(role) = R::ROLE {
            guard::require_role(&admin.principal, role)?;
        }
        let Path(agent_id) = Path::<String>::from_request_parts(parts, app).await?;
        let agent = addressable_agent(app, &admin.principal, &agent_id).await?;
        Ok(Self { admin, agent, least: PhantomData })
    }
}
