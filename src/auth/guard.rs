//! Authorization rules Z1–Z5 (docs/security.md): roles, the impersonation guard and org boundaries,
//! each with the contract's refusal text. Tools and admin routes call these; nothing else decides.

use commguard_domain::refusal::Check;

use super::{Principal, Role};
use crate::error::{ApiError, ErrorCode};

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

/// Z3 / Z4: the caller's role must reach `needed`.
pub fn require_role(principal: &Principal, needed: Role) -> Result<(), ApiError> {
    match (principal.role(), needed) {
        (Role::Agent, Role::Org | Role::SuperAdmin) => {
            Err(forbidden("Admin access required. Agent tokens cannot perform this action."))
        }
        (Role::Org, Role::SuperAdmin) => {
            Err(forbidden("Super-admin access required. Only the orchestrator token can perform this action."))
        }
        _ => Ok(()),
    }
}

/// Z1: an agent token addresses only its own agent.
pub fn own_agent(principal: &Principal, agent_id: &str) -> Result<(), ApiError> {
    match principal.agent_id() {
        Some(own) if principal.role() == Role::Agent && own != agent_id => {
            Err(forbidden(format!("Token for agent \"{own}\" cannot access agent \"{agent_id}\"")))
        }
        _ => Ok(()),
    }
}

/// Z2: the agent (which exists, in `agent_org`) must be in the caller's org; S skips.
pub fn agent_in_org(principal: &Principal, agent_id: &str, agent_org: &str) -> Result<(), ApiError> {
    if principal.role() == Role::SuperAdmin || principal.org_id.as_deref() == Some(agent_org) {
        Ok(())
    } else {
        Err(forbidden(format!("Agent \"{agent_id}\" does not belong to your organization")).at(Check::OrgBoundary))
    }
}

/// Z5: an org named by an org token must be its own.
pub fn own_org(principal: &Principal, org_id: &str) -> Result<(), ApiError> {
    if principal.role() == Role::SuperAdmin || principal.org_id.as_deref() == Some(org_id) {
        Ok(())
    } else {
        Err(forbidden(format!("Access to organization \"{org_id}\" denied")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, org: &str) -> Principal {
        Principal {
            kind: Role::Agent,
            id: id.into(),
            org_id: Some(org.into()),
            token_id: None,
            actor_id: id.into(),
            elevated: false,
        }
    }

    #[test]
    fn roles_and_boundaries_refuse_with_the_contract_texts() {
        let a = agent("a1", "o1");
        let org = Principal { kind: Role::Org, id: "o1".into(), ..agent("x", "o1") };
        let master = Principal::master("master");
        assert_eq!(
            require_role(&a, Role::Org).unwrap_err().message,
            "Admin access required. Agent tokens cannot perform this action."
        );
        assert!(require_role(&org, Role::SuperAdmin).unwrap_err().message.starts_with("Super-admin access required"));
        assert!(require_role(&master, Role::SuperAdmin).is_ok());
        assert_eq!(own_agent(&a, "a2").unwrap_err().message, "Token for agent \"a1\" cannot access agent \"a2\"");
        assert!(own_agent(&org, "a2").is_ok());
        assert!(agent_in_org(&org, "a2", "o2").is_err());
        assert!(agent_in_org(&master, "a2", "o2").is_ok());
        assert_eq!(own_org(&org, "o2").unwrap_err().message, "Access to organization \"o2\" denied");
        let demo_agent = Principal { elevated: true, ..a };
        assert!(require_role(&demo_agent, Role::SuperAdmin).is_ok());
    }
}
