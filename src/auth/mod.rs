//! Who is calling (docs/security.md): credentials resolve once into a typed `Principal`; handlers never
//! parse headers. `identity` resolves tokens (with a cache that revocation invalidates on every
//! instance), `lockout` counts failures per IP in Postgres, `guard` holds the role and org rules.

pub mod caller;
pub mod credential;
pub mod guard;
pub mod identity;
pub mod lockout;

use axum::http::HeaderMap;
use uuid::Uuid;

use crate::store::{Actor, ActorKind};

pub use identity::{AuthFailure, Identity};
pub use lockout::Lockout;

/// The three roles, least to most privileged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Agent,
    Org,
    SuperAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Org => "org",
            Self::SuperAdmin => "super-admin",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// What the credential is: sessions are bound to (kind, id).
    pub kind: Role,
    /// agentId, orgId, or `master` for the super-admin.
    pub id: String,
    /// The agent's org, or the org itself; `None` for the super-admin.
    pub org_id: Option<String>,
    pub token_id: Option<Uuid>,
    /// Who events name as the actor: the id, or `dev-open` / `demo` for credential-less access.
    pub actor_id: String,
    /// Demo mode gives a valid agent token super-admin rights (docs/security.md#development-and-demo-modes).
    pub elevated: bool,
}

impl Principal {
    pub fn master(actor_id: &str) -> Self {
        Self {
            kind: Role::SuperAdmin,
            id: "master".into(),
            org_id: None,
            token_id: None,
            actor_id: actor_id.into(),
            elevated: false,
        }
    }

    /// The rights this principal has.
    pub fn role(&self) -> Role {
        if self.elevated {
            Role::SuperAdmin
        } else {
            self.kind
        }
    }

    /// The agent an agent token is bound to.
    pub fn agent_id(&self) -> Option<&str> {
        (self.kind == Role::Agent).then_some(self.id.as_str())
    }

    /// Same principal for session binding: equal kind and id (a rotated token of the same agent
    /// is the same principal).
    pub fn same_as(&self, other: &Principal) -> bool {
        self.kind == other.kind && self.id == other.id
    }

    /// The principal stream events about this principal go to (`<kind>:<id>`).
    pub fn stream_id(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }

    pub fn actor(&self) -> Actor {
        let kind = match self.kind {
            Role::Agent => ActorKind::Agent,
            Role::Org => ActorKind::Org,
            Role::SuperAdmin => ActorKind::SuperAdmin,
        };
        Actor { kind, id: self.actor_id.clone() }
    }
}

/// The credential of a request: `Authorization: Bearer <token>` (any other scheme or an empty
/// token is malformed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bearer {
    Absent,
    Malformed,
    Token(String),
}

pub fn bearer(headers: &HeaderMap) -> Bearer {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Bearer::Absent;
    };
    let Ok(text) = value.to_str() else {
        return Bearer::Malformed;
    };
    let mut parts = text.trim().splitn(2, ' ');
    match (parts.next(), parts.next().map(str::trim)) {
        (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Bearer::Token(token.to_string())
        }
        _ => Bearer::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_credentials_are_parsed_strictly() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_str(v).unwrap());
            bearer(&h)
        };
        assert_eq!(bearer(&HeaderMap::new()), Bearer::Absent);
        assert_eq!(with("Bearer abc"), Bearer::Token("abc".into()));
        assert_eq!(with("bearer  abc "), Bearer::Token("abc".into()));
        assert_eq!(with("Basic abc"), Bearer::Malformed);
        assert_eq!(with("Bearer "), Bearer::Malformed);
    }

    #[test]
    fn rotated_tokens_of_one_agent_are_the_same_principal() {
        let a = Principal {
            kind: Role::Agent,
            id: "a1".into(),
            org_id: Some("o".into()),
            token_id: Some(Uuid::from_u128(1)),
            actor_id: "a1".into(),
            elevated: false,
        };
        let rotated = Principal { token_id: Some(Uuid::from_u128(2)), ..a.clone() };
        let org = Principal { kind: Role::Org, id: "a1".into(), ..a.clone() };
        assert!(a.same_as(&rotated));
        assert!(!a.same_as(&org));
    }
}
