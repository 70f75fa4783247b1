//! Steps (1) lockout through (4) credential of opening an MCP session or sending on one
//! (docs/mcp.md#legacy-httpsse, docs/mcp.md#streamable-http): the lockout gate, the bearer token
//! or the query token, and its resolution into a `Principal`; every failure counted by the lockout.

use std::net::IpAddr;

use axum::http::HeaderMap;

use super::{bearer, AuthFailure, Bearer, Identity, Lockout, Principal};
use crate::crypto::tokens::fingerprint;
use crate::error::{ApiError, ErrorCode};

/// Where a credential may come from, and how a missing one is worded.
pub struct CredentialRules {
    pub route: &'static str,
    /// Whether the route takes `?token=` (`/sse`): there an `Authorization` header that is no
    /// Bearer credential is not a credential at all, and the query token is looked at instead;
    /// elsewhere such a header is refused (docs/mcp.md).
    pub takes_query_token: bool,
    pub query_token: Option<String>,
    pub missing_message: &'static str,
    pub www_authenticate: bool,
}

fn unauthorized(message: &str, rules: &CredentialRules) -> ApiError {
    let e = ApiError::new(ErrorCode::Unauthorized, message);
    if rules.www_authenticate {
        e.header("WWW-Authenticate", "Bearer realm=\"commguard\"")
    } else {
        e
    }
}

/// A principal `authenticate` found, not yet admitted: the request may still be refused (agent
/// claim, session binding, org state), and a refused request neither resets the IP's failure
/// count nor marks its token used.
pub struct Authenticated {
    pub principal: Principal,
    /// A credential was presented and verified (not dev-open or demo without one).
    verified: bool,
    /// The route it was presented on, as failures record it.
    route: &'static str,
    /// The presented token's fingerprint, for a failure found later (an agent claim or a session
    /// that is not the token's).
    fingerprint: Option<String>,
}

impl Authenticated {
    /// The request passed authorization: a verified credential resets the IP's failure count
    /// (docs/http.md#rate-limits-and-brute-force "success resets the count") and marks its token used (`lastUsedAt`).
    /// The presented token's fingerprint (none for dev-open or demo without a credential).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// `Err` (`locked_out`) if the IP was locked after the gate let this request in.
    pub async fn admit(&self, lockout: &Lockout, identity: &Identity, ip: IpAddr) -> Result<(), ApiError> {
        if self.verified {
            lockout.succeed(ip, self.route).await?;
            identity.touch(&self.principal);
        }
        Ok(())
    }
}

/// Steps (1) lockout through (4) credential of docs/mcp.md#legacy-httpsse / docs/mcp.md#streamable-http: the principal, or the refusal. The
/// caller admits it (`Authenticated::admit`) once the rest of its checks pass.
pub async fn authenticate(
    lockout: &Lockout,
    identity: &Identity,
    headers: &HeaderMap,
    ip: IpAddr,
    rules: &CredentialRules,
) -> Result<Authenticated, ApiError> {
    lockout.gate(ip, rules.route).await?;
    let presented = match bearer(headers) {
        Bearer::Token(token) => Some(token),
        Bearer::Malformed if !rules.takes_query_token => {
            lockout.fail(ip, AuthFailure::Missing, rules.route, None, None).await?;
            return Err(unauthorized("Missing Authorization header. Use: Bearer <token>", rules));
        }
        Bearer::Malformed | Bearer::Absent => rules.query_token.clone().filter(|t| !t.is_empty()),
    };
    let Some(token) = presented else {
        if let Some(anonymous) = identity.anonymous() {
            return Ok(Authenticated { principal: anonymous, verified: false, route: rules.route, fingerprint: None });
        }
        lockout.fail(ip, AuthFailure::Missing, rules.route, None, None).await?;
        return Err(unauthorized(rules.missing_message, rules));
    };
    match identity.resolve(&token).await {
        Ok(principal) => {
            Ok(Authenticated { principal, verified: true, route: rules.route, fingerprint: Some(fingerprint(&token)) })
        }
        Err(AuthFailure::Unavailable) => Err(ApiError::new(ErrorCode::Unavailable, "Service unavailable")),
        Err(failure) => {
            lockout.fail(ip, failure, rules.route, Some(&fingerprint(&token)), None).await?;
            Err(unauthorized("Invalid or revoked token", rules))
        }
    }
}
