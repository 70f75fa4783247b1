//! The caller of a tool (docs/tools.md#common-rules): the principal, the session's agent claim, the transport
//! and the request id — what every tool, the outbound pipeline and refusals read about who asked.

use crate::auth::Principal;
use crate::clock::Clock;
use crate::error::{ApiError, ErrorCode};
use crate::store::CommandContext;
use crate::validate::Args;

/// The MCP transport a session runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Legacy HTTP+SSE (`/sse` + `/messages`), protocol 2024-11-05.
    Sse,
    /// Streamable HTTP (`/mcp`).
    Streamable,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Streamable => "streamable-http",
        }
    }
}

/// Who is calling a tool, through which session.
pub struct Caller<'a> {
    pub principal: &'a Principal,
    /// The agent claimed when the session opened (default `agentId`).
    pub claim: Option<&'a str>,
    pub transport: Transport,
    pub request_id: &'a str,
}

impl Caller<'_> {
    /// The context events of this call carry. Called once the role and the input have been
    /// checked, so both are recorded as passed; commands add the checks they run themselves.
    pub fn context(&self, clock: &Clock) -> CommandContext {
        let mut context = self.bare_context(clock);
        context.provenance.pass("role");
        context.provenance.pass("input");
        context
    }

    /// A context with `checks` recorded as passed (the outbound pipeline names its own).
    pub fn context_checked(&self, clock: &Clock, checks: &[&str]) -> CommandContext {
        let mut context = self.bare_context(clock);
        for check in checks {
            context.provenance.pass(check);
        }
        context
    }

    pub fn bare_context(&self, clock: &Clock) -> CommandContext {
        let context = CommandContext::new(self.principal.actor(), self.transport.as_str(), clock.now())
            .with_request_id(self.request_id);
        match &self.principal.org_id {
            Some(org) => context.in_org(org.clone()),
            None => context,
        }
    }

    /// agentId = explicit → agent token's → session claim (docs/tools.md#common-rules).
    pub fn agent_id(&self, args: &Args, admin_tool: bool) -> Result<String, ApiError> {
        if let Some(id) = args.opt_id("agentId")? {
            return Ok(id);
        }
        if let Some(own) = self.principal.agent_id() {
            return Ok(own.to_string());
        }
        if let Some(claim) = self.claim {
            return Ok(claim.to_string());
        }
        let hint = if admin_tool { "(pass it explicitly or use an agent token)" } else { "(or use an agent token)" };
        Err(ApiError::new(ErrorCode::InvalidInput, format!("agentId is required {hint}")).with("field", "agentId"))
    }
}
