//! Every error and refusal text the contract fixes, checked against real servers in one table
//! (docs/configuration.md, docs/mcp.md, docs/security.md, docs/tools.md, docs/errors.md, docs/webhooks.md, docs/compliance.md, docs/admin-api.md, docs/http.md#hardening). A row names the text, says how it is
//! provoked, and expects a code, the HTTP status where the text travels as an HTTP answer, and
//! the exact text (`…` at the end of an expected text: the contract fixes only that prefix).
//!
//! Rows run in table order on the server of their group: the main server (most rows), one with
//! tiny HTTP rate limits, one in production; one row runs the binary. Placeholders in `{…}` are
//! the fixtures' ids and tokens. A few rows build on an earlier one; they say so.
//!
//! Not provoked here (see the end of `table`): texts that need a real provider or a failing
//! database, and the docs/mcp.md#legacy-httpsse (6) refusal of a revoked opening token, whose session the revocation
//! itself closes first (it then answers `Unknown session`, which is a row).

use std::collections::HashMap;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::{binary, McpSession, TestDb, TestServer};

const MASTER: &str = "texts-test-master-token-0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-for-texts";
const HOOKS: &str = "https://hooks.example.com";
const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// 13:00 in Washington, 10:00 in San Francisco, 19:00 in Paris (a Tuesday).
const BASE_TIME: &str = "2026-12-01T18:00:00Z";
const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#;
const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;

const ADMIN_REQUIRED: &str = "Admin access required. Agent tokens cannot perform this action.";
const SUPER_REQUIRED: &str = "Super-admin access required. Only the orchestrator token can perform this action.";
const MISSING_BEARER: &str = "Missing Authorization header. Use: Bearer <token>";
const LOCKED: &str = "Too many failed attempts. Try again later.";
const STOP_REPLY: &str = "<Response><Message>You have been unsubscribed and will not receive further messages. Reply START to resubscribe.</Message></Response>";
const START_REPLY: &str =
    "<Response><Message>You have been resubscribed. Reply STOP to unsubscribe.</Message></Response>";
const HELP_REPLY: &str =
    "<Response><Message>Reply STOP to unsubscribe. Msg&amp;data rates may apply.</Message></Response>";
const EMPTY: &str = "<Response/>";

/// The server a row runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    /// Development, master token, test clock, webhook secrets, `TRUST_PROXY=1` (each row comes
    /// from its own address), a denylist and a webhook allowlist; no provider credentials.
    Main,
    /// `HTTP_RATE_LIMIT_PER_IP=2`, `HTTP_RATE_LIMIT_GLOBAL=3`.
    Limited,
    /// `COMMGUARD_ENV=production` without webhook secrets.
    Production,
}

#[derive(Clone, Copy)]
enum Sig {
    Good,
    Bad,
    Omit,
}

/// A Svix timestamp: the service clock's now, so many seconds before it, or a raw value.
#[derive(Clone, Copy)]
enum Ts {
    Now,
    Ago(i64),
    Raw(&'static str),
}

enum Step {
    /// A tool call by the holder of the token named `who`; `args` is JSON with placeholders.
    Tool { who: &'static str, tool: &'static str, args: &'static str },
    /// An HTTP request (from the row's address unless `from` says otherwise).
    Http {
        method: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, String)>,
        body: Option<&'static str>,
        from: Option<&'static str>,
    },
    /// A form POST to a Twilio webhook, signed as Twilio signs it (or not); `form: false` sends JSON.
    Twilio { path: &'static str, params: Vec<(&'static str, &'static str)>, sig: Sig, form: bool },
    /// A JSON POST to the Resend webhook with Svix headers.
    Svix { path: &'static str, id: &'static str, ts: Ts, sig: Sig, body: &'static str },
    /// A query on the server's database (facts without a read API yet): its first text column.
    Sql(&'static str),
    /// The binary with only `env`: the status is its exit code, the text is looked for in stderr.
    Binary { args: &'static [&'static str], env: &'static [(&'static str, &'static str)] },
}

struct Row {
    name: &'static str,
    server: Server,
    /// The client address (`X-Forwarded-For`); by default one of its own per row.
    from: Option<&'static str>,
    /// Run first, in order; their outcomes are not checked (the row's own step proves them).
    setup: Vec<Step>,
    step: Step,
    /// Service time for the step (the clock goes back to `BASE_TIME` after it).
    clock: Option<&'static str>,
    /// `None`: a successful tool result (or a TwiML answer, which has no code).
    code: Option<&'static str>,
    status: Option<u16>,
    /// JSON pointer of the text; `""` = the whole body.
    at: &'static str,
    text: &'static str,
    /// More members that must match: (JSON pointer or `header:<name>`, value; `*` = present).
    also: Vec<(&'static str, &'static str)>,
}

fn base(name: &'static str, step: Step) -> Row {
    Row {
        name,
        server: Server::Main,
        from: None,
        setup: Vec::new(),
        step,
        clock: None,
        code: None,
        status: None,
        at: "/error",
        text: "",
        also: Vec::new(),
    }
}

/// A tool call row.
fn tool(name: &'static str, who: &'static str, tool: &'static str, args: &'static str) -> Row {
    base(name, call(who, tool, args))
}

fn call(who: &'static str, tool: &'static str, args: &'static str) -> Step {
    Step::Tool { who, tool, args }
}

/// An HTTP row.
fn http(name: &'static str, method: &'static str, path: &'static str) -> Row {
    base(name, request(method, path))
}

fn request(method: &'static str, path: &'static str) -> Step {
    Step::Http { method, path, headers: Vec::new(), body: None, from: None }
}

fn twilio(name: &'static str, path: &'static str, params: &[(&'static str, &'static str)], sig: Sig) -> Row {
    base(name, Step::Twilio { path, params: params.to_vec(), sig, form: true })
}

fn svix(name: &'static str, id: &'static str, ts: Ts, sig: Sig, body: &'static str) -> Row {
    base(name, Step::Svix { path: "/webhooks/a1/email", id, ts, sig, body })
}

impl Row {
    /// A refusal with `code` and exact `text`.
    fn refused(mut self, code: &'static str, text: &'static str) -> Self {
        self.code = Some(code);
        self.text = text;
        self
    }

    /// An HTTP refusal.
    fn answers(mut self, status: u16, code: &'static str, text: &'static str) -> Self {
        self.status = Some(status);
        self.refused(code, text)
    }

    /// A JSON-RPC error (no id) with `code` and `text` as its message.
    fn rpc_error(mut self, status: u16, code: &'static str, text: &'static str) -> Self {
        self.status = Some(status);
        self.at = "/error/message";
        self.text = text;
        self.also("/error/code", code).also("/id", "null").also("/jsonrpc", "2.0")
    }

    /// `text` as the message at `member` (a JSON pointer) of a batch's answer, 200: a member
    /// that is no message gets its own error (JSON-RPC 2.0 §6), the others are answered as usual.
    fn rpc_member_error(mut self, member: &'static str, text: &'static str) -> Self {
        self.status = Some(200);
        self.at = member;
        self.text = text;
        self
    }

    /// A TwiML (or other non-JSON) answer: the whole body.
    fn body_is(mut self, status: u16, body: &'static str) -> Self {
        self.status = Some(status);
        self.at = "";
        self.text = body;
        self
    }

    /// A successful tool result whose member at `pointer` is `text`.
    fn result(mut self, pointer: &'static str, text: &'static str) -> Self {
        self.at = pointer;
        self.text = text;
        self
    }

    fn at(mut self, pointer: &'static str) -> Self {
        self.at = pointer;
        self
    }

    fn also(mut self, key: &'static str, value: &'static str) -> Self {
        self.also.push((key, value));
        self
    }

    fn after(mut self, step: Step) -> Self {
        self.setup.push(step);
        self
    }

    fn on(mut self, server: Server) -> Self {
        self.server = server;
        self
    }

    fn from(mut self, ip: &'static str) -> Self {
        self.from = Some(ip);
        self
    }

    fn clock(mut self, now: &'static str) -> Self {
        self.clock = Some(now);
        self
    }

    fn bearer(self, who: &'static str) -> Self {
        self.header("authorization", format!("Bearer {{{who}}}"))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        match &mut self.step {
            Step::Http { headers, .. } => headers.push((name, value.into())),
            _ => panic!("{}: only HTTP rows take headers", self.name),
        }
        self
    }

    fn body(mut self, json: &'static str) -> Self {
        match &mut self.step {
            Step::Http { body, .. } => *body = Some(json),
            _ => panic!("{}: only HTTP rows take a body", self.name),
        }
        self
    }
}

impl Step {
    fn auth(self, value: &'static str) -> Self {
        match self {
            Step::Http { method, path, mut headers, body, from } => {
                headers.push(("authorization", value.to_string()));
                Step::Http { method, path, headers, body, from }
            }
            other => other,
        }
    }

    fn from(self, ip: &'static str) -> Self {
        match self {
            Step::Http { method, path, headers, body, .. } => {
                Step::Http { method, path, headers, body, from: Some(ip) }
            }
            other => other,
        }
    }
}

const SMS_TO_DC: &str = r#"{"to":"+12025550100","body":"Your table is ready."}"#;
const EMAIL_TO_PAT: &str = r#"{"channel":"email","to":"pat@example.com","subject":"Hi","body":"Hello"}"#;

/// The table. Order matters only where a row says so.
fn table() -> Vec<Row> {
    use Server::*;
    let sanitized = |name: &'static str, args: &'static str, text: &'static str| {
        tool(name, "agentA", "comms_send_message", args).refused("invalid_input", text)
    };
    vec![
        // ── docs/mcp.md#legacy-httpsse legacy HTTP+SSE: GET /sse ────────────────────────────────────────────────────
        http("sse: no credential", "GET", "/sse").answers(401, "unauthorized", "Missing token. Use: /sse?token=<token>"),
        http("sse: unknown token", "GET", "/sse?token=nope").answers(401, "unauthorized", "Invalid or revoked token"),
        // docs/mcp.md#legacy-httpsse (2): a header that is no Bearer credential is none; `?token=` is read.
        http("sse: a Basic header and no token", "GET", "/sse")
            .header("authorization", "Basic dXNlcjpwYXNz")
            .answers(401, "unauthorized", "Missing token. Use: /sse?token=<token>"),
        http("sse: a Basic header and an unknown token", "GET", "/sse?token=nope")
            .header("authorization", "Basic dXNlcjpwYXNz")
            .answers(401, "unauthorized", "Invalid or revoked token"),
        http("sse: unknown bearer", "GET", "/sse")
            .header("authorization", "Bearer nope")
            .answers(401, "unauthorized", "Invalid or revoked token"),
        http("sse: agent token claims another agent", "GET", "/sse?token={agentA}&agentId=b1").answers(
            401,
            "unauthorized",
            "Token agentId does not match requested agentId",
        ),
        http("sse: org token claims an unknown agent", "GET", "/sse?token={adminA}&agentId=ghost").answers(
            404,
            "not_found",
            r#"Agent "ghost" not found"#,
        ),
        http("sse: org token claims another org's agent", "GET", "/sse?token={adminA}&agentId=b1").answers(
            403,
            "forbidden",
            r#"Agent "b1" does not belong to your organization"#,
        ),
        http("sse: suspended org", "GET", "/sse?token={agentS}").answers(
            403,
            "forbidden",
            r#"Organization "{orgS}" is suspended"#,
        ),
        // ── docs/mcp.md#legacy-httpsse POST /messages (the master's SSE session is open: {sseSession}) ──────────────
        http("messages: malformed Authorization", "POST", "/messages?sessionId={sseSession}")
            .header("authorization", "Basic abc")
            .body(PING)
            .answers(401, "unauthorized", MISSING_BEARER),
        http("messages: unknown bearer", "POST", "/messages?sessionId={sseSession}")
            .header("authorization", "Bearer nope")
            .body(PING)
            .answers(401, "unauthorized", "Invalid or revoked token"),
        http("messages: unknown session", "POST", "/messages?sessionId=nope").body(PING).answers(
            400,
            "not_found",
            "Unknown session",
        ),
        http("messages: another principal's session", "POST", "/messages?sessionId={sseSession}")
            .bearer("adminA")
            .body(PING)
            .answers(403, "forbidden", "Session belongs to a different principal"),
        http("messages: bad JSON-RPC", "POST", "/messages?sessionId={sseSession}").body("{").answers(
            400,
            "invalid_input",
            "Invalid message: …",
        ),
        // ── docs/mcp.md#streamable-http Streamable HTTP /mcp ─────────────────────────────────────────────────────────
        http("mcp: no bearer", "POST", "/mcp")
            .body(INIT)
            .answers(401, "unauthorized", MISSING_BEARER)
            .also("header:www-authenticate", r#"Bearer realm="commguard""#),
        http("mcp: ?token= is ignored", "POST", "/mcp?token={master}")
            .body(INIT)
            .answers(401, "unauthorized", MISSING_BEARER)
            .also("header:www-authenticate", r#"Bearer realm="commguard""#),
        http("mcp: malformed Authorization", "POST", "/mcp")
            .header("authorization", "Basic abc")
            .body(INIT)
            .answers(401, "unauthorized", MISSING_BEARER),
        http("mcp: unknown bearer", "POST", "/mcp")
            .header("authorization", "Bearer nope")
            .body(INIT)
            .answers(401, "unauthorized", "Invalid or revoked token")
            .also("header:www-authenticate", r#"Bearer realm="commguard""#),
        http("mcp: agent token claims another agent (X-Agent-Id)", "POST", "/mcp")
            .bearer("agentA")
            .header("x-agent-id", "b1")
            .body(INIT)
            .answers(401, "unauthorized", "Token agentId does not match requested agentId"),
        http("mcp: org token claims an unknown agent (?agentId=)", "POST", "/mcp?agentId=ghost")
            .bearer("adminA")
            .body(INIT)
            .answers(404, "not_found", r#"Agent "ghost" not found"#),
        http("mcp: org token claims another org's agent", "POST", "/mcp")
            .bearer("adminA")
            .header("x-agent-id", "b1")
            .body(INIT)
            .answers(403, "forbidden", r#"Agent "b1" does not belong to your organization"#),
        http("mcp: suspended org", "POST", "/mcp").bearer("agentS").body(INIT).answers(
            403,
            "forbidden",
            r#"Organization "{orgS}" is suspended"#,
        ),
        http("mcp: another principal's session", "POST", "/mcp")
            .bearer("adminA")
            .header("mcp-session-id", "{masterSession}")
            .body(PING)
            .answers(403, "forbidden", "Session belongs to a different principal"),
        http("mcp: not JSON", "POST", "/mcp")
            .bearer("master")
            .header("mcp-session-id", "{masterSession}")
            .body("{")
            .rpc_error(400, "-32700", "Parse error: …"),
        http("mcp: JSON, not a JSON-RPC message", "POST", "/mcp")
            .bearer("master")
            .header("mcp-session-id", "{masterSession}")
            .body(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#)
            .rpc_error(400, "-32600", "Invalid Request: jsonrpc must be \"2.0\""),
        http("mcp: an empty batch", "POST", "/mcp")
            .bearer("master")
            .header("mcp-session-id", "{masterSession}")
            .body("[]")
            .rpc_error(400, "-32600", "Invalid Request: empty batch"),
        http("mcp: a batch member that is no message", "POST", "/mcp")
            .bearer("master")
            .header("mcp-session-id", "{masterSession}")
            .body(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"1.0","id":2,"method":"ping"}]"#)
            .rpc_member_error("/1/error/message", "Invalid Request: jsonrpc must be \"2.0\"")
            .also("/1/error/code", "-32600")
            .also("/1/id", "null")
            .also("/0/id", "1")
            .also("/0/result", "{}"),
        http("mcp: a request with a null id", "POST", "/mcp")
            .bearer("master")
            .header("mcp-session-id", "{masterSession}")
            .body(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#)
            .rpc_error(400, "-32600", "Invalid Request: id must be a string or a number"),
        // The version check holds for every method of an open session (refused, the session stays).
        http("mcp: unsupported protocol version (POST)", "POST", "/mcp")
            .bearer("master")
            .header("mcp-session-id", "{masterSession}")
            .header("mcp-protocol-version", "1999-01-01")
            .body(PING)
            .answers(400, "invalid_input", "Unsupported MCP-Protocol-Version: 1999-01-01"),
        http("mcp: unsupported protocol version (GET)", "GET", "/mcp")
            .bearer("master")
            .header("accept", "text/event-stream")
            .header("mcp-session-id", "{masterSession}")
            .header("mcp-protocol-version", "1999-01-01")
            .answers(400, "invalid_input", "Unsupported MCP-Protocol-Version: 1999-01-01"),
        http("mcp: unsupported protocol version (DELETE)", "DELETE", "/mcp")
            .bearer("master")
            .header("mcp-session-id", "{masterSession}")
            .header("mcp-protocol-version", "1999-01-01")
            .answers(400, "invalid_input", "Unsupported MCP-Protocol-Version: 1999-01-01"),
        // ── docs/mcp.md#tool-results tool results ─────────────────────────────────────────────────────────────────
        tool("unknown tool", "agentA", "comms_fly", "{}").refused("not_found", "Unknown tool: comms_fly"),
        // ── docs/security.md Z1–Z7 ──────────────────────────────────────────────────────────────────────────
        tool("Z1 agent token on another agent", "agentA", "comms_get_channel_status", r#"{"agentId":"b1"}"#)
            .refused("forbidden", r#"Token for agent "a1" cannot access agent "b1""#),
        tool(
            "Z1 in the outbound pipeline",
            "agentA",
            "comms_send_message",
            r#"{"agentId":"b1","to":"+12025550100","body":"hi"}"#,
        )
        .refused("forbidden", r#"Token for agent "a1" cannot access agent "b1""#),
        tool("Z1 on consent", "agentA", "comms_record_consent", r#"{"agentId":"b1","contactAddress":"+12025550100","channel":"sms"}"#)
            .refused("forbidden", r#"Token for agent "a1" cannot access agent "b1""#),
        tool("Z2 unknown agent", "adminA", "comms_get_channel_status", r#"{"agentId":"ghost"}"#)
            .refused("not_found", r#"Agent "ghost" not found"#),
        tool("Z2 another org's agent", "adminA", "comms_get_channel_status", r#"{"agentId":"b1"}"#)
            .refused("forbidden", r#"Agent "b1" does not belong to your organization"#),
        tool(
            "Z2 in the outbound pipeline",
            "adminA",
            "comms_send_message",
            r#"{"agentId":"b1","to":"+12025550100","body":"hi"}"#,
        )
        .refused("forbidden", r#"Agent "b1" does not belong to your organization"#),
        tool("Z2 on deprovisioning", "adminA", "comms_deprovision_channels", r#"{"agentId":"b1"}"#)
            .refused("forbidden", r#"Agent "b1" does not belong to your organization"#),
        http("Z2 admin route, another org's agent", "GET", "/admin/api/agents/b1").bearer("adminA").answers(
            403,
            "forbidden",
            r#"Agent "b1" does not belong to your organization"#,
        ),
        http("Z2 admin route, unknown agent", "GET", "/admin/api/agents/ghost").bearer("adminA").answers(
            404,
            "not_found",
            r#"Agent "ghost" not found"#,
        ),
        tool("Z3 agent calls an O tool", "agentA", "comms_provision_channels", r#"{"displayName":"x"}"#)
            .refused("forbidden", ADMIN_REQUIRED),
        tool("Z3 agent removes a DNC entry", "agentA", "comms_dnc_remove", r#"{"address":"+12025550123","reason":"mistake"}"#)
            .refused("forbidden", ADMIN_REQUIRED),
        tool("Z3 agent rotates its org's token", "agentA", "comms_rotate_token", r#"{"target":"org"}"#)
            .refused("forbidden", ADMIN_REQUIRED),
        tool("Z3 agent calls an S tool", "agentA", "comms_create_organization", r#"{"name":"x","slug":"xx"}"#)
            .refused("forbidden", ADMIN_REQUIRED),
        tool("Z4 org calls an S tool", "adminA", "comms_create_organization", r#"{"name":"x","slug":"xx"}"#)
            .refused("forbidden", SUPER_REQUIRED),
        tool("Z4 org lists organizations", "adminA", "comms_list_organizations", "{}").refused("forbidden", SUPER_REQUIRED),
        tool("Z7 org sets agent limits", "adminA", "comms_set_agent_limits", r#"{"agentId":"a1","limits":{"maxActionsPerMinute":5}}"#)
            .refused("forbidden", SUPER_REQUIRED),
        tool("Z7 org sets billing", "adminA", "comms_set_billing_config", r#"{"agentId":"a1","tier":"pro"}"#)
            .refused("forbidden", SUPER_REQUIRED),
        tool(
            "Z7 org registers a provider",
            "adminA",
            "comms_register_provider",
            r#"{"provider":"resend","credentials":{"apiKey":"re_x"},"autoVerify":false}"#,
        )
        .refused("forbidden", SUPER_REQUIRED),
        http("Z4 admin: org creates an org", "POST", "/admin/api/orgs")
            .bearer("adminA")
            .body(r#"{"name":"x","slug":"xx"}"#)
            .answers(403, "forbidden", SUPER_REQUIRED),
        http("Z7 admin: org approves itself", "POST", "/admin/api/orgs/{orgA}/approve")
            .bearer("adminA")
            .body(r#"{"kycNote":"docs ok"}"#)
            .answers(403, "forbidden", SUPER_REQUIRED),
        http("Z7 admin: org suspends itself", "POST", "/admin/api/orgs/{orgA}/suspend")
            .bearer("adminA")
            .body(r#"{"reason":"x"}"#)
            .answers(403, "forbidden", SUPER_REQUIRED),
        http("Z7 admin: org unsuspends", "POST", "/admin/api/orgs/{orgA}/unsuspend")
            .bearer("adminA")
            .answers(403, "forbidden", SUPER_REQUIRED),
        // docs/errors.md: the org's state forbids it (`conflict`, "already in mode").
        http("suspend a suspended org", "POST", "/admin/api/orgs/{orgS}/suspend")
            .bearer("master")
            .body(r#"{"reason":"again"}"#)
            .answers(409, "conflict", r#"Organization "{orgS}" is already suspended"#),
        http("approve a suspended org", "POST", "/admin/api/orgs/{orgS}/approve")
            .bearer("master")
            .body(r#"{"kycNote":"docs ok"}"#)
            .answers(409, "conflict", r#"Organization "{orgS}" is suspended"#),
        http("Z7 admin: org changes maxAgents", "POST", "/admin/api/orgs/{orgA}/settings")
            .bearer("adminA")
            .body(r#"{"maxAgents":5}"#)
            .answers(403, "forbidden", SUPER_REQUIRED),
        http("Z7 admin: org sets agent limits", "POST", "/admin/api/agents/a1/limits")
            .bearer("adminA")
            .body(r#"{"limits":{"maxActionsPerMinute":5}}"#)
            .answers(403, "forbidden", SUPER_REQUIRED),
        http("Z7 admin: org sets billing", "POST", "/admin/api/agents/a1/billing")
            .bearer("adminA")
            .body(r#"{"tier":"pro"}"#)
            .answers(403, "forbidden", SUPER_REQUIRED),
        http("Z7 admin: org registers a provider", "POST", "/admin/api/providers")
            .bearer("adminA")
            .body(r#"{"provider":"resend","credentials":{"apiKey":"re_x"},"autoVerify":false}"#)
            .answers(403, "forbidden", SUPER_REQUIRED),
        tool("Z5 org provisions in another org", "adminA", "comms_provision_channels", r#"{"displayName":"x","orgId":"{orgB}"}"#)
            .refused("forbidden", r#"Access to organization "{orgB}" denied"#),
        tool("DNC list of a type that is no string", "adminA", "comms_dnc_list", r#"{"type":5}"#)
            .refused("invalid_input", r#"Invalid input for "type": must be a string"#),
        tool("Z5 org adds to another org's DNC", "adminA", "comms_dnc_add", r#"{"address":"+12025550111","orgId":"{orgB}"}"#)
            .refused("forbidden", r#"Access to organization "{orgB}" denied"#),
        http("Z5 admin: org reads another org", "GET", "/admin/api/orgs/{orgB}").bearer("adminA").answers(
            403,
            "forbidden",
            r#"Access to organization "{orgB}" denied"#,
        ),
        // An org the super-admin names that does not exist is 404 on every admin list.
        http("unknown orgId: events", "GET", "/admin/api/events?orgId=nope").bearer("master").answers(404, "not_found", r#"Organization "nope" not found"#),
        http("unknown orgId: audit", "GET", "/admin/api/audit?orgId=nope").bearer("master").answers(404, "not_found", r#"Organization "nope" not found"#),
        http("unknown orgId: agents", "GET", "/admin/api/agents?orgId=nope").bearer("master").answers(404, "not_found", r#"Organization "nope" not found"#),
        http("unknown orgId: alerts", "GET", "/admin/api/alerts?orgId=nope").bearer("master").answers(404, "not_found", r#"Organization "nope" not found"#),
        http("unknown orgId: anomalies", "GET", "/admin/api/anomalies?orgId=nope").bearer("master").answers(404, "not_found", r#"Organization "nope" not found"#),
        http("unknown orgId: usage", "GET", "/admin/api/usage?orgId=nope").bearer("master").answers(404, "not_found", r#"Organization "nope" not found"#),
        // Z6 (with docs/errors.md and docs/compliance.md#country-rules: every compliance refusal starts `Compliance: `).
        tool("Z6 suspended org sends (S)", "master", "comms_send_message", r#"{"agentId":"s1","channel":"email","to":"pat@example.com","subject":"Hi","body":"Hello"}"#)
            .refused("compliance_blocked", r#"Compliance: Organization "{orgS}" is suspended"#)
            .also("/rule", "sandbox"),
        tool("Z6 suspended org provisions (S)", "master", "comms_provision_channels", r#"{"displayName":"x","orgId":"{orgS}"}"#)
            .refused("compliance_blocked", r#"Compliance: Organization "{orgS}" is suspended"#)
            .also("/rule", "sandbox"),
        // ── docs/security.md providers (production org, no credentials anywhere) ────────────────────────────
        tool("no telephony provider (SMS)", "adminP", "comms_send_message", r#"{"agentId":"p1","to":"+12025550100","body":"hi"}"#)
            .refused("unavailable", "No telephony provider configured"),
        tool("no telephony provider (call)", "adminP", "comms_make_call", r#"{"agentId":"p1","to":"+12025550100"}"#)
            .refused("unavailable", "No telephony provider configured"),
        tool("no email provider (email)", "adminP", "comms_send_message", r#"{"agentId":"p1","channel":"email","to":"pat@example.com","subject":"Hi","body":"Hello"}"#)
            .refused("unavailable", "No email provider configured"),
        tool("no telephony provider (provisioning)", "adminP", "comms_provision_channels", r#"{"displayName":"x","capabilities":{"phone":true}}"#)
            .refused("unavailable", "No telephony provider configured"),
        tool("no email provider (provisioning)", "adminP", "comms_provision_channels", r#"{"displayName":"x","capabilities":{"email":true}}"#)
            .refused("unavailable", "No email provider configured"),
        // ── docs/tools.md#the-outbound-pipeline agentId and the pipeline's agent_state ───────────────────────────────────────
        tool("agentId missing (A O S tool)", "master", "comms_send_message", SMS_TO_DC)
            .refused("invalid_input", "agentId is required (or use an agent token)"),
        tool("agentId missing (read)", "master", "comms_get_channel_status", "{}")
            .refused("invalid_input", "agentId is required (or use an agent token)"),
        tool("agentId missing (O/S tool)", "adminA", "comms_deprovision_channels", "{}")
            .refused("invalid_input", "agentId is required (pass it explicitly or use an agent token)"),
        tool("agentId missing (S tool)", "master", "comms_set_agent_limits", r#"{"limits":{"maxActionsPerMinute":5}}"#)
            .refused("invalid_input", "agentId is required (pass it explicitly or use an agent token)"),
        tool("agent not active", "adminA", "comms_send_message", r#"{"agentId":"a3","to":"+12025550100","body":"hi"}"#)
            .refused("conflict", r#"Agent "a3" is not active (status: deprovisioned)"#),
        tool("agent has no phone number (SMS)", "adminA", "comms_send_message", r#"{"agentId":"a2","to":"+12025550100","body":"hi"}"#)
            .refused("conflict", r#"Agent "a2" has no phone number"#),
        tool("agent has no phone number (call)", "adminA", "comms_make_call", r#"{"agentId":"a2","to":"+12025550100"}"#)
            .refused("conflict", r#"Agent "a2" has no phone number"#),
        tool("agent has no email address", "adminA", "comms_send_message", r#"{"agentId":"a2","channel":"email","to":"pat@example.com","subject":"Hi","body":"Hello"}"#)
            .refused("conflict", r#"Agent "a2" has no email address"#),
        tool("agent blocked on sms", "adminA", "comms_send_message", r#"{"agentId":"a4","to":"+12025550100","body":"hi"}"#)
            .refused("forbidden", r#"Agent "a4" is blocked on sms channel"#),
        tool("agent blocked on voice", "adminA", "comms_make_call", r#"{"agentId":"a4","to":"+12025550100"}"#)
            .refused("forbidden", r#"Agent "a4" is blocked on voice channel"#),
        // ── docs/tools.md#input-formats-and-sanitizer formats and sanitizer ────────────────────────────────────────────────────────
        sanitized("phone format", r#"{"to":"12345","body":"hi"}"#, r#"Invalid input for "to": Invalid phone number format (expected E.164, e.g. +1234567890)"#)
            .also("/field", "to"),
        tool("phone format (consent)", "agentA", "comms_record_consent", r#"{"contactAddress":"call me","channel":"sms"}"#)
            .refused("invalid_input", r#"Invalid input for "contactAddress": Invalid phone number format (expected E.164, e.g. +1234567890)"#)
            .also("/field", "contactAddress"),
        sanitized("email format", r#"{"channel":"email","to":"not-an-email","subject":"Hi","body":"x"}"#, r#"Invalid input for "to": Invalid email address format"#)
            .also("/field", "to"),
        sanitized("SQL injection", r#"{"to":"+12025550100","body":"x'; DROP TABLE users"}"#, r#"Invalid input for "body": SQL injection pattern"#)
            .also("/field", "body"),
        sanitized("SQL tautology", r#"{"to":"+12025550100","body":"a' or '1'='1"}"#, r#"Invalid input for "body": SQL tautology pattern"#),
        sanitized("script tag", r#"{"to":"+12025550100","body":"<script>alert(1)</script>"}"#, r#"Invalid input for "body": Script tag"#),
        sanitized("script tag, percent-encoded", r#"{"to":"+12025550100","body":"%3Cscript%3Ealert(1)"}"#, r#"Invalid input for "body": Script tag"#),
        sanitized("script tag, entity-encoded", r#"{"to":"+12025550100","body":"&lt;script&gt;alert(1)"}"#, r#"Invalid input for "body": Script tag"#),
        sanitized("script tag in a single-line field", r#"{"to":"<script>","body":"hi"}"#, r#"Invalid input for "to": Script tag"#)
            .also("/field", "to"),
        sanitized("active content tag", r#"{"to":"+12025550100","body":"<iframe src=x>"}"#, r#"Invalid input for "body": Active content tag"#),
        sanitized("JavaScript URI", r#"{"to":"+12025550100","body":"javascript:alert(1)"}"#, r#"Invalid input for "body": JavaScript URI"#),
        sanitized("event handler", r#"{"to":"+12025550100","body":"<img src=x onerror=alert(1)>"}"#, r#"Invalid input for "body": Event handler injection"#),
        sanitized("control character", r#"{"to":"+12025550100","body":"bell\u0007"}"#, r#"Invalid input for "body": Control character"#),
        sanitized("CRLF in a single-line field", r#"{"channel":"email","to":"pat@example.com","subject":"Hi\r\nBcc: x@example.com","body":"x"}"#, r#"Invalid input for "subject": CRLF injection"#)
            .also("/field", "subject"),
        sanitized("CRLF in a multi-line field", r#"{"to":"+12025550100","body":"x\r\nHTTP/1.1 200 OK"}"#, r#"Invalid input for "body": CRLF injection"#),
        sanitized("path traversal", r#"{"to":"+12025550100","body":"see ../../etc/passwd"}"#, r#"Invalid input for "body": Path traversal"#),
        sanitized("command injection", r#"{"to":"+12025550100","body":"hi; rm -rf /"}"#, r#"Invalid input for "body": Command injection"#),
        sanitized("command substitution", r#"{"to":"+12025550100","body":"$(whoami)"}"#, r#"Invalid input for "body": Command injection"#),
        http("sanitizer over the admin API", "POST", "/admin/api/dnc")
            .bearer("adminA")
            .body(r#"{"address":"+12025550111","reason":"<script>x</script>"}"#)
            .answers(400, "invalid_input", r#"Invalid input for "reason": Script tag"#)
            .also("/field", "reason"),
        // ── docs/tools.md#catalogue tool texts ───────────────────────────────────────────────────────────────────
        tool("whatsapp", "agentA", "comms_send_message", r#"{"channel":"whatsapp","to":"+12025550100","body":"hi"}"#)
            .refused("unavailable", r#"Channel "whatsapp" is not available"#),
        tool("templateId", "agentA", "comms_send_message", r#"{"to":"+12025550100","body":"hi","templateId":"welcome"}"#)
            .refused("invalid_input", "templateId is not supported")
            .also("/field", "templateId"),
        tool("email without subject", "agentA", "comms_send_message", r#"{"channel":"email","to":"pat@example.com","body":"hi"}"#)
            .refused("invalid_input", "Subject is required for email channel")
            .also("/field", "subject"),
        tool("duplicate agent", "adminA", "comms_provision_channels", r#"{"agentId":"a1","displayName":"Again"}"#)
            .refused("conflict", r#"Agent "a1" already exists"#),
        tool("agent pool full", "adminC", "comms_provision_channels", r#"{"displayName":"One too many"}"#)
            .refused("quota_exceeded", "Agent pool is full (1/1). Deprovision an agent first.")
            .also("/current", "1")
            .also("/max", "1"),
        tool("already deprovisioned", "adminA", "comms_deprovision_channels", r#"{"agentId":"a3"}"#)
            .refused("conflict", r#"Agent "a3" is already deprovisioned"#),
        tool("duplicate slug", "master", "comms_create_organization", r#"{"name":"Again","slug":"texts-a"}"#)
            .refused("conflict", r#"Organization slug "texts-a" already exists"#),
        http("duplicate slug (admin API)", "POST", "/admin/api/orgs")
            .bearer("master")
            .body(r#"{"name":"Again","slug":"texts-a"}"#)
            .answers(409, "conflict", r#"Organization slug "texts-a" already exists"#),
        // docs/tools.md#catalogue names the text `Country compliance requirements not met`; docs/compliance.md#country-rules: country-rule
        // refusals start with `Compliance: `, like every compliance refusal.
        tool("country rules", "adminB", "comms_provision_channels", r#"{"displayName":"x","country":"CA","capabilities":{"phone":true}}"#)
            .refused("compliance_blocked", "Compliance: Country compliance requirements not met")
            .also("/rule", "country_rules"),
        tool("country rules: A2P blocker", "adminB", "comms_provision_channels", r#"{"displayName":"x","country":"CA","capabilities":{"phone":true}}"#)
            .refused("compliance_blocked", "Canada requires A2P SMS registration before sending business messages")
            .at("/blockers/0"),
        tool("country rules: hours warning", "adminB", "comms_provision_channels", r#"{"displayName":"x","country":"CA","capabilities":{"phone":true}}"#)
            .refused("compliance_blocked", "Canada restricts calling hours to 8:00-21:00 local time")
            .at("/warnings/0/message")
            .also("/warnings/0/code", "calling_hours"),
        tool("country rules: recording warning", "adminB", "comms_provision_channels", r#"{"displayName":"x","country":"CA","capabilities":{"phone":true}}"#)
            .refused("compliance_blocked", "Canada requires consent to record calls")
            .at("/warnings/1/message")
            .also("/warnings/1/code", "recording_consent"),
        tool("revoke without consent", "agentA", "comms_revoke_consent", r#"{"contactAddress":"+12025550999","channel":"sms"}"#)
            .result("/message", "No active consent found to revoke"),
        tool("check without consent", "agentA", "comms_check_consent", r#"{"contactAddress":"+12025550999","channel":"sms"}"#)
            .result("/message", "No consent record found")
            .also("/status", "none"),
        tool("consent for a contact on the DNC list", "agentA", "comms_record_consent", r#"{"contactAddress":"+12025550123","channel":"sms"}"#)
            .result("/warnings/0/code", "on_dnc"),
        tool("CAN-SPAM warning", "agentA", "comms_send_message", EMAIL_TO_PAT)
            .result("/warnings/0/message", "Email has no unsubscribe link (CAN-SPAM)")
            .also("/warnings/0/code", "can_spam_unsubscribe_missing"),
        // The provider is a local double answering every request 400 {"message":"boom"}.
        tool("verification failed (twilio)", "master", "comms_register_provider", r#"{"provider":"twilio","credentials":{"accountSid":"ACtexts","authToken":"secret"},"orgId":"{orgF}"}"#)
            .refused("provider_error", "Verification failed for twilio: twilio: boom")
            .also("/provider", "twilio"),
        tool("verification failed (resend)", "master", "comms_register_provider", r#"{"provider":"resend","credentials":{"apiKey":"re_texts"},"orgId":"{orgF}"}"#)
            .refused("provider_error", "Verification failed for resend: resend: boom")
            .also("/provider", "resend"),
        tool("provisioning failed", "adminF", "comms_provision_channels", r#"{"displayName":"x","capabilities":{"phone":true}}"#)
            .refused("provider_error", "Provisioning failed: twilio: boom")
            .also("/provider", "twilio"),
        // ── docs/errors.md / docs/limits.md rate limits: each agent's first action passes, the next is refused ────────
        tool("limit per-minute", "adminA", "comms_send_message", r#"{"agentId":"l1","to":"+12025550100","body":"hi"}"#)
            .after(call("adminA", "comms_send_message", r#"{"agentId":"l1","to":"+12025550100","body":"hi"}"#))
            .refused("rate_limited", "Rate limit exceeded: per-minute (1/1). Resets in up to 60 seconds.")
            .also("/limitType", "per-minute")
            .also("/resetDescription", "in up to 60 seconds")
            .also("/resetAt", "*"),
        tool("limit per-hour", "adminA", "comms_send_message", r#"{"agentId":"l2","to":"+12025550100","body":"hi"}"#)
            .after(call("adminA", "comms_send_message", r#"{"agentId":"l2","to":"+12025550100","body":"hi"}"#))
            .refused("rate_limited", "Rate limit exceeded: per-hour (1/1). Resets in up to 60 minutes.")
            .also("/limitType", "per-hour"),
        tool("limit per-day", "adminA", "comms_send_message", r#"{"agentId":"l3","to":"+12025550100","body":"hi"}"#)
            .after(call("adminA", "comms_send_message", r#"{"agentId":"l3","to":"+12025550100","body":"hi"}"#))
            .refused("rate_limited", "Rate limit exceeded: per-day (1/1). Resets at midnight UTC.")
            .also("/limitType", "per-day"),
        tool("limit daily-spend", "adminA", "comms_send_message", r#"{"agentId":"l4","to":"+12025550100","body":"hi"}"#)
            .after(call("adminA", "comms_send_message", r#"{"agentId":"l4","to":"+12025550100","body":"hi"}"#))
            .refused("rate_limited", "Rate limit exceeded: daily-spend (0.0079/0.005). Resets at midnight UTC.")
            .also("/limitType", "daily-spend"),
        // Whole dollars read as JavaScript prints them: `0`, not `0.0`.
        tool("limit daily-spend, whole dollars", "adminA", "comms_send_message", r#"{"agentId":"l7","to":"+12025550100","body":"hi"}"#)
            .refused("rate_limited", "Rate limit exceeded: daily-spend (0/0). Resets at midnight UTC.")
            .also("/limitType", "daily-spend"),
        tool("limit monthly-spend", "adminA", "comms_send_message", r#"{"agentId":"l5","to":"+12025550100","body":"hi"}"#)
            .after(call("adminA", "comms_send_message", r#"{"agentId":"l5","to":"+12025550100","body":"hi"}"#))
            .refused("rate_limited", "Rate limit exceeded: monthly-spend (0.0079/0.005). Resets at the start of next month.")
            .also("/limitType", "monthly-spend"),
        tool("limit contact-frequency", "adminA", "comms_make_call", r#"{"agentId":"l6","to":"+12025550100"}"#)
            .after(call("adminA", "comms_make_call", r#"{"agentId":"l6","to":"+12025550100"}"#))
            .after(call("adminA", "comms_make_call", r#"{"agentId":"l6","to":"+12025550100"}"#))
            .refused("rate_limited", "Rate limit exceeded: contact-frequency (2/2). Resets at midnight UTC.")
            .also("/limitType", "contact-frequency"),
        tool("limit org_spend_day", "adminL", "comms_send_message", r#"{"agentId":"lo1","to":"+12025550100","body":"hi"}"#)
            .after(call("adminL", "comms_send_message", r#"{"agentId":"lo1","to":"+12025550100","body":"hi"}"#))
            .refused("rate_limited", "Rate limit exceeded: org_spend_day (0.0079/0.005). Resets at midnight UTC.")
            .also("/limitType", "org_spend_day"),
        tool("limit org_spend_month", "adminM", "comms_send_message", r#"{"agentId":"lm1","to":"+12025550100","body":"hi"}"#)
            .after(call("adminM", "comms_send_message", r#"{"agentId":"lm1","to":"+12025550100","body":"hi"}"#))
            .refused("rate_limited", "Rate limit exceeded: org_spend_month (0.0079/0.005). Resets at the start of next month.")
            .also("/limitType", "org_spend_month"),
        // ── docs/compliance.md compliance ────────────────────────────────────────────────────────────────────
        tool("threat", "agentA", "comms_send_message", r#"{"to":"+12025550100","body":"I will hurt you"}"#)
            .refused("compliance_blocked", "Compliance: Message contains threatening content")
            .also("/rule", "content_filter"),
        tool("threat in a call greeting", "agentA", "comms_make_call", r#"{"to":"+12025550100","greeting":"go die"}"#)
            .refused("compliance_blocked", "Compliance: Message contains threatening content"),
        tool("prohibited language", "agentA", "comms_send_message", r#"{"channel":"email","to":"pat@example.com","subject":"what the sh1t","body":"x"}"#)
            .refused("compliance_blocked", "Compliance: Message contains prohibited language")
            .also("/rule", "content_filter"),
        tool("DNC (phone)", "agentA", "comms_send_message", r#"{"to":"+1 202 555 0123","body":"hi"}"#)
            .refused("compliance_blocked", "Compliance: +12025550123 is on the Do Not Contact list")
            .also("/rule", "dnc"),
        tool("DNC (email)", "agentA", "comms_send_message", r#"{"channel":"email","to":"DNC@example.com","subject":"Hi","body":"x"}"#)
            .refused("compliance_blocked", "Compliance: dnc@example.com is on the Do Not Contact list"),
        tool("no consent (sms)", "agentA", "comms_send_message", r#"{"to":"+12025550999","body":"hi"}"#)
            .refused("compliance_blocked", "Compliance: No active consent from +12025550999 for sms. Record consent before sending.")
            .also("/rule", "consent_required"),
        tool("no consent (email)", "agentA", "comms_send_message", r#"{"channel":"email","to":"nobody@example.com","subject":"Hi","body":"x"}"#)
            .refused("compliance_blocked", "Compliance: No active consent from nobody@example.com for email. Record consent before sending."),
        tool("no consent (call)", "agentA", "comms_make_call", r#"{"to":"+12025550999"}"#)
            .refused("compliance_blocked", "Compliance: No active consent from +12025550999 for voice. Record consent before sending."),
        tool("no consent (voice message)", "agentA", "comms_send_voice_message", r#"{"to":"+12025550999","text":"Reminder"}"#)
            .refused("compliance_blocked", "Compliance: No active consent from +12025550999 for voice. Record consent before sending."),
        tool("transactional consent only", "agentA", "comms_send_message", r#"{"to":"+12025550198","body":"Sale!"}"#)
            .refused("compliance_blocked", "Compliance: No active consent from +12025550198 for sms. Record consent before sending.")
            .also("/consentType", "transactional"),
        tool("quiet hours (call)", "agentA", "comms_make_call", r#"{"to":"+12125550100"}"#)
            .clock("2026-12-02T03:00:00Z")
            .refused("compliance_blocked", "Compliance: TCPA: Calls not allowed at this time (22:00 in America/New_York). Allowed: 8:00 AM - 9:00 PM.")
            .also("/rule", "quiet_hours")
            .also("/zone", "America/New_York"),
        tool("quiet hours (voice message)", "agentA", "comms_send_voice_message", r#"{"to":"+12125550100","text":"Reminder"}"#)
            .clock("2026-12-02T03:00:00Z")
            .refused("compliance_blocked", "Compliance: TCPA: Calls not allowed at this time (22:00 in America/New_York). Allowed: 8:00 AM - 9:00 PM."),
        tool("quiet hours (France, its own window)", "agentA", "comms_make_call", r#"{"to":"+33123456789","purpose":"transactional"}"#)
            .clock("2026-12-01T19:30:00Z")
            .refused("compliance_blocked", "Compliance: TCPA: Calls not allowed at this time (20:00 in Europe/Paris). Allowed: 8:00 AM - 8:00 PM."),
        tool("recording consent", "agentA", "comms_make_call", r#"{"to":"+14155550100","record":true}"#)
            .refused("compliance_blocked", "Compliance: Recording consent required: California requires all-party consent to record calls.")
            .also("/rule", "recording_consent"),
        // ── docs/webhooks.md#email Resend (Svix) webhook ────────────────────────────────────────────────────────
        http("email webhook: unknown agent", "POST", "/webhooks/ghost/email")
            .body(r#"{"type":"email.sent"}"#)
            .answers(404, "not_found", "Agent not found"),
        svix("email webhook: missing Svix headers", "msg_t1", Ts::Now, Sig::Omit, r#"{"type":"email.sent"}"#)
            .answers(403, "forbidden", "Missing Svix signature headers"),
        svix("email webhook: bad timestamp", "msg_t2", Ts::Raw("soon"), Sig::Good, r#"{"type":"email.sent"}"#)
            .answers(403, "forbidden", "Invalid webhook timestamp"),
        svix("email webhook: expired timestamp", "msg_t3", Ts::Ago(301), Sig::Good, r#"{"type":"email.sent"}"#)
            .answers(403, "forbidden", "Webhook timestamp expired"),
        svix("email webhook: wrong signature", "msg_t4", Ts::Now, Sig::Bad, r#"{"type":"email.sent"}"#)
            .answers(403, "forbidden", "Invalid webhook signature"),
        svix("email webhook: replayed", "msg_t5", Ts::Now, Sig::Good, r#"{"type":"email.sent"}"#)
            .after(Step::Svix { path: "/webhooks/a1/email", id: "msg_t5", ts: Ts::Now, sig: Sig::Good, body: r#"{"type":"email.sent"}"# })
            .answers(403, "forbidden", "Webhook replayed"),
        svix("email webhook: accepted", "msg_t6", Ts::Now, Sig::Good, r#"{"type":"email.sent"}"#)
            .body_is(200, r#"{"ok":true}"#),
        svix("email webhook: missing from or to", "msg_t7", Ts::Now, Sig::Good, r#"{"type":"email.received","data":{"subject":"x"}}"#)
            .answers(400, "invalid_input", "Missing from or to"),
        svix("email webhook: not the agent's address", "msg_t8", Ts::Now, Sig::Good, r#"{"type":"email.received","data":{"from":"lee@example.com","to":["someone@elsewhere.example"]}}"#)
            .answers(404, "not_found", "Agent not found"),
        http("email webhook: outside the allowlist", "POST", "/webhooks/a1/email")
            .from("192.0.2.99")
            .body(r#"{"type":"email.sent"}"#)
            .answers(403, "forbidden", "Forbidden"),
        // ── docs/webhooks.md Twilio webhooks: TwiML bodies ────────────────────────────────────────────
        twilio("sms webhook: unknown agent", "/webhooks/ghost/sms", &[("MessageSid", "SMt1"), ("From", "+12025550401"), ("To", "{numberA}"), ("Body", "hi")], Sig::Good)
            .body_is(404, EMPTY),
        twilio("sms webhook: no signature", "/webhooks/a1/sms", &[("MessageSid", "SMt2"), ("From", "+12025550401"), ("To", "{numberA}"), ("Body", "hi")], Sig::Omit)
            .body_is(403, EMPTY),
        twilio("sms webhook: wrong signature", "/webhooks/a1/sms", &[("MessageSid", "SMt3"), ("From", "+12025550401"), ("To", "{numberA}"), ("Body", "hi")], Sig::Bad)
            .body_is(403, EMPTY),
        base("sms webhook: not a form", Step::Twilio { path: "/webhooks/a1/sms", params: vec![("MessageSid", "SMt4")], sig: Sig::Good, form: false })
            .body_is(400, EMPTY),
        twilio("sms webhook: missing From", "/webhooks/a1/sms", &[("MessageSid", "SMt5"), ("To", "{numberA}"), ("Body", "hi")], Sig::Good)
            .body_is(400, EMPTY),
        twilio("sms webhook: not the agent's number", "/webhooks/a1/sms", &[("MessageSid", "SMt6"), ("From", "+12025550401"), ("To", "+15550000000"), ("Body", "hi")], Sig::Good)
            .body_is(404, EMPTY),
        twilio("sms webhook: replayed", "/webhooks/a1/sms", &[("MessageSid", "SMt7"), ("From", "+12025550401"), ("To", "{numberA}"), ("Body", "hi")], Sig::Good)
            .after(Step::Twilio { path: "/webhooks/a1/sms", params: vec![("MessageSid", "SMt7"), ("From", "+12025550401"), ("To", "{numberA}"), ("Body", "hi")], sig: Sig::Good, form: true })
            .body_is(403, EMPTY),
        twilio("sms webhook: plain message", "/webhooks/a1/sms", &[("MessageSid", "SMt8"), ("From", "+12025550401"), ("To", "{numberA}"), ("Body", "STOP.")], Sig::Good)
            .body_is(200, EMPTY),
        twilio("sms webhook: STOP", "/webhooks/a1/sms", &[("MessageSid", "SMt9"), ("From", "+12025550402"), ("To", "{numberA}"), ("Body", " stop ")], Sig::Good)
            .body_is(200, STOP_REPLY),
        // After the STOP row (same sender).
        twilio("sms webhook: START", "/webhooks/a1/sms", &[("MessageSid", "SMt10"), ("From", "+12025550402"), ("To", "{numberA}"), ("Body", "Start")], Sig::Good)
            .body_is(200, START_REPLY),
        twilio("sms webhook: HELP", "/webhooks/a1/sms", &[("MessageSid", "SMt11"), ("From", "+12025550403"), ("To", "{numberA}"), ("Body", "INFO")], Sig::Good)
            .body_is(200, HELP_REPLY),
        twilio("call-status: unknown status", "/webhooks/a1/call-status", &[("CallSid", "CAt1"), ("CallStatus", "exploded")], Sig::Good)
            .body_is(400, EMPTY),
        twilio("call-status: unknown call", "/webhooks/a1/call-status", &[("CallSid", "CAt2"), ("CallStatus", "ringing")], Sig::Good)
            .body_is(404, EMPTY),
        twilio("voice/status: unknown call", "/webhooks/a1/voice/status", &[("CallSid", "CAt3"), ("CallStatus", "ringing")], Sig::Good)
            .body_is(404, EMPTY),
        twilio("sms webhook: outside the allowlist", "/webhooks/a1/sms", &[("MessageSid", "SMt12"), ("From", "+12025550401"), ("To", "{numberA}"), ("Body", "hi")], Sig::Good)
            .from("192.0.2.99")
            .body_is(403, EMPTY),
        // ── docs/admin-api.md authentication ──────────────────────────────────────────────────────
        http("admin: no Authorization", "GET", "/admin/api/me").answers(401, "unauthorized", MISSING_BEARER),
        http("admin: malformed Authorization", "GET", "/admin/api/me")
            .header("authorization", "Basic abc")
            .answers(401, "unauthorized", MISSING_BEARER),
        http("admin: unknown token", "GET", "/admin/api/me")
            .header("authorization", "Bearer nope")
            .answers(401, "unauthorized", "Invalid admin token"),
        http("admin: an agent token", "GET", "/admin/api/me").bearer("agentA").answers(401, "unauthorized", "Invalid admin token"),
        // ── docs/http.md#hardening ─────────────────────────────────────────────────────────────────────
        http("denylist", "GET", "/health").from("203.0.113.9").answers(403, "forbidden", "Forbidden"),
        http("denylist on MCP", "POST", "/mcp").from("203.0.113.9").bearer("master").body(INIT).answers(403, "forbidden", "Forbidden"),
        // Ten failures from one address lock it; the next rows come from that address too.
        http("lockout on /sse", "GET", "/sse?token=nope")
            .from("192.0.2.200")
            .after(request("GET", "/admin/api/me").auth("Bearer wrong-1"))
            .after(request("GET", "/admin/api/me").auth("Bearer wrong-2"))
            .after(request("GET", "/admin/api/me").auth("Bearer wrong-3"))
            .after(request("GET", "/admin/api/me").auth("Bearer wrong-4"))
            .after(request("GET", "/admin/api/me").auth("Bearer wrong-5"))
            .after(request("GET", "/sse?token=wrong-6"))
            .after(request("GET", "/sse?token=wrong-7"))
            .after(request("POST", "/mcp").auth("Bearer wrong-8"))
            .after(request("POST", "/mcp").auth("Bearer wrong-9"))
            .after(request("POST", "/mcp").auth("Bearer wrong-10"))
            .answers(429, "locked_out", LOCKED)
            .also("/retryAfter", "*")
            .also("header:retry-after", "*"),
        http("lockout on /mcp (after the row above)", "POST", "/mcp")
            .from("192.0.2.200")
            .bearer("master")
            .body(INIT)
            .answers(429, "locked_out", LOCKED)
            .also("/retryAfter", "*"),
        http("lockout on /admin/api (after the row above)", "GET", "/admin/api/me")
            .from("192.0.2.200")
            .bearer("master")
            .answers(429, "locked_out", LOCKED),
        http("lockout on /messages (after the row above)", "POST", "/messages?sessionId={sseSession}")
            .from("192.0.2.200")
            .body(PING)
            .answers(429, "locked_out", LOCKED),
        // docs/http.md#rate-limits-and-brute-force / docs/monitoring.md: the lock raised its HIGH alert (no alerts API yet: read from the store).
        base("lockout alert title", Step::Sql("SELECT payload::jsonb ->> 'title' FROM events WHERE event_type = 'AlertRaised' AND payload::jsonb ->> 'rule' = 'brute_force_lockout'"))
            .result("", "Brute-force lockout"),
        // ── docs/configuration.md: the binary refuses to start ─────────────────────────────────────
        base("bad data key", Step::Binary { args: &["migrate"], env: &[("DATA_ENCRYPTION_KEY", "zz")] })
            .body_is(2, "Encryption key must be 32 bytes (64 hex characters)"),
        base("bad credentials key", Step::Binary { args: &["migrate"], env: &[("CREDENTIALS_ENCRYPTION_KEY", "0123")] })
            .body_is(2, "Encryption key must be 32 bytes (64 hex characters)"),
        // ── docs/http.md#rate-limits-and-brute-force (their own server) ─────────────────────────────────────────
        http("HTTP per-IP limit", "GET", "/health")
            .on(Limited)
            .from("192.0.2.1")
            .after(request("GET", "/health"))
            .after(request("GET", "/health"))
            .answers(429, "rate_limited", "Too many requests")
            .also("header:retry-after", "*"),
        // Two requests of the row above and one here fill the global bucket of 3.
        http("HTTP global limit", "GET", "/health")
            .on(Limited)
            .from("192.0.2.3")
            .after(request("GET", "/health").from("192.0.2.2"))
            .answers(429, "rate_limited", "Too many requests (global limit)")
            .also("header:retry-after", "*"),
        // ── docs/webhooks.md#twilio-routes / docs/webhooks.md#email production without webhook secrets ────────────────────────────────────
        twilio("sms webhook: no secret in production", "/webhooks/pr1/sms", &[("MessageSid", "SMp1"), ("From", "+12025550401"), ("To", "{numberPr}"), ("Body", "hi")], Sig::Omit)
            .on(Production)
            .body_is(503, EMPTY),
        twilio("call-status: no secret in production", "/webhooks/pr1/call-status", &[("CallSid", "CAp1"), ("CallStatus", "ringing")], Sig::Omit)
            .on(Production)
            .body_is(503, EMPTY),
        // The contract fixes the status (503) and the code (docs/errors.md `unavailable`); the text is ours.
        http("email webhook: no secret in production", "POST", "/webhooks/pr1/email")
            .on(Production)
            .body(r#"{"type":"email.sent"}"#)
            .answers(503, "unavailable", "Webhook secret is not configured"),
        // Not provoked:
        // - `/health/ready` `status:"degraded"` (docs/http.md#routes) needs Postgres to fail within 2 s.
        // - docs/mcp.md#legacy-httpsse (6) `Invalid or revoked token` for a session whose opening token was revoked:
        //   rotation, deprovisioning and suspension close those sessions themselves, so a later
        //   request meets `Unknown session` (a row above); the text itself is several rows above.
        // - Real provider refusals (`provider_error` from Twilio or Resend on a send) need a real
        //   provider; their wording is the provider's. The local double covers the contract's
        //   fixed prefixes (`Verification failed for <p>: `, `Provisioning failed: `).
    ]
}

/// A local provider double: every request is refused with 400 `{"message":"boom"}`.
async fn refusing_provider() -> String {
    let app = axum::Router::new().fallback(|| async {
        (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"message": "boom", "code": 21_000})))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// What a step produced.
struct Outcome {
    status: Option<u16>,
    is_error: Option<bool>,
    body: String,
    json: Value,
    headers: reqwest::header::HeaderMap,
}

struct Ctx<'a> {
    s: &'a TestServer,
    db: sqlx::PgPool,
    vars: HashMap<String, String>,
    sessions: HashMap<String, McpSession>,
    /// Streams held open (the master's SSE session).
    _held: Vec<reqwest::Response>,
}

impl<'a> Ctx<'a> {
    async fn new(s: &'a TestServer, db: &TestDb) -> Self {
        let vars = HashMap::from([("master".to_string(), MASTER.to_string())]);
        Self { s, db: db.pool().await, vars, sessions: HashMap::new(), _held: Vec::new() }
    }

    fn sub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    fn set(&mut self, key: &str, value: &Value) {
        let value = value.as_str().unwrap_or_else(|| panic!("fixture {key} is not a string: {value}"));
        self.vars.insert(key.into(), value.into());
    }

    async fn call(&mut self, who: &str, tool: &str, args: Value) -> (bool, Value) {
        if !self.sessions.contains_key(who) {
            let token = self.vars.get(who).unwrap_or_else(|| panic!("no token named {who}")).clone();
            let session = McpSession::open(self.s, &token).await;
            self.sessions.insert(who.into(), session);
        }
        self.sessions[who].call(tool, args).await
    }

    async fn ok(&mut self, who: &str, tool: &str, args: Value) -> Value {
        let (is_error, value) = self.call(who, tool, args).await;
        assert!(!is_error, "fixture {who} {tool}: {value}");
        value
    }

    async fn admin(&self, who: &str, path: &str, body: Value) -> Value {
        let r = self.s.http.post(self.s.url(&self.sub(path))).bearer_auth(&self.vars[who]).json(&body).send().await;
        let r = r.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "fixture {path}: {body}");
        body
    }

    async fn set_clock(&self, now: &str) {
        self.admin("master", "/admin/api/test/clock", json!({"now": now})).await;
    }

    /// The service clock, in Unix seconds.
    async fn now(&self) -> i64 {
        let now = self.admin("master", "/admin/api/test/clock", json!({"advanceSeconds": 0})).await;
        chrono::DateTime::parse_from_rfc3339(now["now"].as_str().unwrap()).unwrap().timestamp()
    }

    /// Creates an org; sets `org<key>` and `admin<key>`.
    async fn org(&mut self, key: &str, slug: &str, a2p: bool) {
        let org = self
            .ok("master", "comms_create_organization", json!({"name": slug, "slug": slug, "a2pRegistered": a2p}))
            .await;
        self.set(&format!("org{key}"), &org["orgId"]);
        self.set(&format!("admin{key}"), &org["adminToken"]);
    }

    async fn provision(&mut self, admin: &str, agent_id: &str, phone: bool, email: bool) -> Value {
        let args =
            json!({"agentId": agent_id, "displayName": agent_id, "capabilities": {"phone": phone, "email": email}});
        self.ok(admin, "comms_provision_channels", args).await
    }

    async fn consent(&mut self, who: &str, agent_id: &str, to: &str, channel: &str) {
        let args = json!({"agentId": agent_id, "contactAddress": to, "channel": channel});
        self.ok(who, "comms_record_consent", args).await;
    }
}

/// The main server's orgs, agents, consents, DNC entries, limits and open sessions.
async fn main_fixtures(c: &mut Ctx<'_>) {
    c.set_clock(BASE_TIME).await;
    c.org("A", "texts-a", true).await;
    let a1 = c.provision("adminA", "a1", true, true).await;
    c.set("agentA", &a1["securityToken"]);
    c.set("numberA", &a1["channels"]["phone"]);
    c.provision("adminA", "a2", false, false).await;
    c.provision("adminA", "a3", false, false).await;
    c.ok("adminA", "comms_deprovision_channels", json!({"agentId": "a3"})).await;
    c.provision("adminA", "a4", true, false).await;
    c.admin("adminA", "/admin/api/agents/a4/blocked-channels", json!({"blockedChannels": ["sms", "voice"]})).await;
    for (to, channel) in [
        ("+12025550100", "sms"),
        ("+12025550100", "voice"),
        ("pat@example.com", "email"),
        ("+14155550100", "voice"),
        ("+12125550100", "voice"),
        ("+33123456789", "voice"),
    ] {
        c.consent("agentA", "a1", to, channel).await;
    }
    let transactional = json!({"contactAddress": "+12025550198", "channel": "sms", "consentType": "transactional"});
    c.ok("agentA", "comms_record_consent", transactional).await;
    for address in ["+12025550123", "dnc@example.com"] {
        c.ok("adminA", "comms_dnc_add", json!({"address": address})).await;
    }

    c.org("B", "texts-b", false).await;
    let b1 = c.provision("adminB", "b1", false, true).await;
    c.set("agentB", &b1["securityToken"]);

    c.org("S", "texts-suspended", true).await;
    let s1 = c.provision("adminS", "s1", false, true).await;
    c.set("agentS", &s1["securityToken"]);
    c.admin("master", "/admin/api/orgs/{orgS}/suspend", json!({"reason": "abuse report"})).await;

    c.org("P", "texts-production", true).await;
    c.provision("adminP", "p1", true, true).await;
    c.consent("adminP", "p1", "+12025550100", "sms").await;
    c.consent("adminP", "p1", "+12025550100", "voice").await;
    c.consent("adminP", "p1", "pat@example.com", "email").await;
    c.admin("master", "/admin/api/orgs/{orgP}/approve", json!({"kycNote": "KYC documents verified"})).await;

    c.org("F", "texts-failing", true).await;
    c.admin("master", "/admin/api/orgs/{orgF}/approve", json!({"kycNote": "KYC documents verified"})).await;
    let unverified = json!({"provider": "twilio", "credentials": {"accountSid": "ACtexts", "authToken": "secret"},
        "autoVerify": false, "orgId": c.vars["orgF"]});
    c.ok("master", "comms_register_provider", unverified).await;

    c.org("C", "texts-capacity", true).await;
    c.admin("master", "/admin/api/orgs/{orgC}/settings", json!({"maxAgents": 1})).await;
    c.provision("adminC", "c1", false, false).await;

    let limits = [
        ("l1", json!({"maxActionsPerMinute": 1})),
        ("l2", json!({"maxActionsPerMinute": 100, "maxActionsPerHour": 1})),
        ("l3", json!({"maxActionsPerMinute": 100, "maxActionsPerHour": 100, "maxActionsPerDay": 1})),
        ("l4", json!({"maxSpendPerDay": 0.005})),
        ("l5", json!({"maxSpendPerMonth": 0.005})),
        ("l6", Value::Null),
        ("l7", json!({"maxSpendPerDay": 0})),
    ];
    for (agent, overrides) in limits {
        c.provision("adminA", agent, true, false).await;
        c.consent("adminA", agent, "+12025550100", "sms").await;
        c.consent("adminA", agent, "+12025550100", "voice").await;
        if !overrides.is_null() {
            c.ok("master", "comms_set_agent_limits", json!({"agentId": agent, "limits": overrides})).await;
        }
    }
    for (key, slug, agent, cap) in
        [("L", "texts-day-cap", "lo1", "maxSpendPerDay"), ("M", "texts-month-cap", "lm1", "maxSpendPerMonth")]
    {
        c.org(key, slug, true).await;
        c.admin("master", &format!("/admin/api/orgs/{{org{key}}}/settings"), json!({cap: 0.005})).await;
        let admin = format!("admin{key}");
        c.provision(&admin, agent, true, false).await;
        c.consent(&admin, agent, "+12025550100", "sms").await;
    }

    // A Streamable HTTP session and an SSE session of the master.
    let init =
        c.s.http
            .post(c.s.url("/mcp"))
            .bearer_auth(MASTER)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(INIT)
            .send()
            .await
            .unwrap();
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"].to_str().unwrap().to_string();
    c.vars.insert("masterSession".into(), session);
    let mut stream = c.s.http.get(c.s.url(&format!("/sse?token={MASTER}"))).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let first = String::from_utf8(stream.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let id = first.split("sessionId=").nth(1).unwrap().trim().to_string();
    c.vars.insert("sseSession".into(), id);
    c._held.push(stream);
}

async fn production_fixtures(c: &mut Ctx<'_>) {
    c.org("Pr", "texts-prod", true).await;
    let agent = c.provision("adminPr", "pr1", true, true).await;
    c.set("numberPr", &agent["channels"]["phone"]);
}

fn svix_signature(id: &str, ts: &str, body: &str) -> String {
    use hmac::Mac;
    let key = base64::engine::general_purpose::STANDARD.decode(SVIX_SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

async fn send(request: reqwest::RequestBuilder) -> Outcome {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Outcome { status: Some(status), is_error: None, body, json, headers }
}

async fn run(c: &mut Ctx<'_>, step: &Step, ip: &str) -> Outcome {
    match step {
        Step::Tool { who, tool, args } => {
            let args: Value = serde_json::from_str(&c.sub(args)).unwrap_or_else(|e| panic!("{args}: {e}"));
            let (is_error, json) = c.call(who, tool, args).await;
            Outcome {
                status: None,
                is_error: Some(is_error),
                body: json.to_string(),
                json,
                headers: Default::default(),
            }
        }
        Step::Http { method, path, headers, body, from } => {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut r = c.s.http.request(method, c.s.url(&c.sub(path))).header("x-forwarded-for", from.unwrap_or(ip));
            if path.starts_with("/mcp") {
                r = r.header("accept", "application/json, text/event-stream");
            }
            for (name, value) in headers {
                r = r.header(*name, c.sub(value));
            }
            if let Some(body) = body {
                r = r.header("content-type", "application/json").body(c.sub(body));
            }
            send(r).await
        }
        Step::Twilio { path, params, sig, form } => {
            let path = c.sub(path);
            let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), c.sub(v))).collect();
            let mut r = c.s.http.post(c.s.url(&path)).header("x-forwarded-for", ip);
            r = match sig {
                Sig::Good => r.header(
                    "x-twilio-signature",
                    commguard::webhooks::signature::twilio_expected(AUTH_TOKEN, &format!("{HOOKS}{path}"), &params),
                ),
                Sig::Bad => r.header("x-twilio-signature", "bm90IGl0"),
                Sig::Omit => r,
            };
            r = if *form {
                let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
                r.header("content-type", "application/x-www-form-urlencoded").body(body)
            } else {
                r.header("content-type", "application/json").body("{}")
            };
            send(r).await
        }
        Step::Svix { path, id, ts, sig, body } => {
            let now = c.now().await;
            let ts = match ts {
                Ts::Now => now.to_string(),
                Ts::Ago(seconds) => (now - seconds).to_string(),
                Ts::Raw(raw) => raw.to_string(),
            };
            let body = c.sub(body);
            let mut r =
                c.s.http
                    .post(c.s.url(&c.sub(path)))
                    .header("x-forwarded-for", ip)
                    .header("content-type", "application/json")
                    .header("svix-id", *id)
                    .header("svix-timestamp", &ts);
            r = match sig {
                Sig::Good => r.header("svix-signature", svix_signature(id, &ts, &body)),
                Sig::Bad => r.header("svix-signature", "v1,bm90IGl0"),
                Sig::Omit => r,
            };
            send(r.body(body)).await
        }
        Step::Sql(query) => {
            // The fact is recorded before the answer that caused it; allow for a slow flush.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let found = loop {
                let found: Option<String> = sqlx::query_scalar(query).fetch_optional(&c.db).await.unwrap().flatten();
                if found.is_some() || std::time::Instant::now() > deadline {
                    break found;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            Outcome {
                status: None,
                is_error: None,
                body: found.unwrap_or_default(),
                json: Value::Null,
                headers: Default::default(),
            }
        }
        Step::Binary { args, env } => {
            let mut cmd = std::process::Command::new(binary());
            cmd.args(*args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
            for (k, v) in *env {
                cmd.env(k, v);
            }
            let out = tokio::task::spawn_blocking(move || cmd.output().expect("commguard runs")).await.unwrap();
            Outcome {
                status: out.status.code().map(|c| c as u16),
                is_error: None,
                body: String::from_utf8_lossy(&out.stderr).into_owned(),
                json: Value::Null,
                headers: Default::default(),
            }
        }
    }
}

/// Where `row` went wrong, if anywhere.
fn mismatches(c: &Ctx<'_>, row: &Row, got: &Outcome) -> Vec<String> {
    let mut wrong = Vec::new();
    if let Some(status) = row.status {
        if got.status != Some(status) {
            wrong.push(format!("status {:?}, expected {status}", got.status));
        }
    }
    match (row.code, got.is_error) {
        (Some(_), Some(false)) => wrong.push("the tool succeeded".into()),
        (None, Some(true)) => wrong.push("the tool refused".into()),
        _ => {}
    }
    if let Some(code) = row.code {
        if got.json["code"] != code {
            wrong.push(format!("code {}, expected {code}", got.json["code"]));
        }
    }
    let expected = c.sub(row.text);
    let actual = if row.at.is_empty() {
        Some(got.body.clone())
    } else {
        got.json.pointer(row.at).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
    };
    let matches = match (&actual, &row.step) {
        (Some(actual), Step::Binary { .. }) => actual.contains(&expected),
        (Some(actual), _) => match expected.strip_suffix('…') {
            Some(prefix) => actual.starts_with(prefix),
            None => *actual == expected,
        },
        (None, _) => false,
    };
    if !matches {
        wrong.push(format!("text {actual:?}, expected {expected:?}"));
    }
    for (key, value) in &row.also {
        let found = match key.strip_prefix("header:") {
            Some(name) => got.headers.get(name).map(|v| v.to_str().unwrap_or_default().to_string()),
            None => got.json.pointer(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)),
        };
        let ok = match (*value, &found) {
            ("*", found) => found.is_some(),
            (value, Some(found)) => *found == c.sub(value),
            (_, None) => false,
        };
        if !ok {
            wrong.push(format!("{key} {found:?}, expected {value:?}"));
        }
    }
    wrong
}

/// Runs the rows of one server's group; returns what went wrong, row by row.
async fn run_group(c: &mut Ctx<'_>, rows: &[(usize, &Row)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (n, row) in rows {
        let ip = row.from.map_or_else(|| format!("10.{}.{}.1", n / 256, n % 256), str::to_string);
        for step in &row.setup {
            run(c, step, &ip).await;
        }
        if let Some(now) = row.clock {
            c.set_clock(now).await;
        }
        let got = run(c, &row.step, &ip).await;
        if row.clock.is_some() {
            c.set_clock(BASE_TIME).await;
        }
        let wrong = mismatches(c, row, &got);
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n    got: {}", row.name, wrong.join("; "), got.body));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_the_contract_fixes_is_exact() {
    let table = table();
    let group = |server: Server| -> Vec<(usize, &Row)> {
        table.iter().enumerate().filter(|(_, row)| row.server == server).collect()
    };
    let mut failures = Vec::new();

    let provider = refusing_provider().await;
    let db = TestDb::new().await;
    let main = TestServer::start(
        &db,
        &[
            ("MASTER_SECURITY_TOKEN", MASTER),
            ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
            ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
            ("COMMGUARD_TEST_CLOCK", "true"),
            ("WEBHOOK_BASE_URL", HOOKS),
            // An auth token without an account SID: webhooks verify, telephony is not configured.
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ("RESEND_WEBHOOK_SECRET", SVIX_SECRET),
            ("TWILIO_API_BASE_URL", provider.as_str()),
            ("RESEND_API_BASE_URL", provider.as_str()),
            ("TRUST_PROXY", "1"),
            ("IP_DENYLIST", "203.0.113.9"),
            ("WEBHOOK_IP_ALLOWLIST", "10.0.0.0/8"),
        ],
    )
    .await;
    let mut c = Ctx::new(&main, &db).await;
    main_fixtures(&mut c).await;
    failures.extend(run_group(&mut c, &group(Server::Main)).await);
    drop(c);
    main.stop().await;

    let db = TestDb::new().await;
    let limited = TestServer::start(
        &db,
        &[
            ("MASTER_SECURITY_TOKEN", MASTER),
            ("TRUST_PROXY", "1"),
            ("HTTP_RATE_LIMIT_PER_IP", "2"),
            ("HTTP_RATE_LIMIT_GLOBAL", "3"),
        ],
    )
    .await;
    failures.extend(run_group(&mut Ctx::new(&limited, &db).await, &group(Server::Limited)).await);
    limited.stop().await;

    let db = TestDb::new().await;
    let production = TestServer::start(
        &db,
        &[
            ("COMMGUARD_ENV", "production"),
            ("MASTER_SECURITY_TOKEN", MASTER),
            ("WEBHOOK_BASE_URL", HOOKS),
            ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
            ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ],
    )
    .await;
    let mut c = Ctx::new(&production, &db).await;
    production_fixtures(&mut c).await;
    failures.extend(run_group(&mut c, &group(Server::Production)).await);
    drop(c);
    production.stop().await;

    assert!(table.len() >= 170, "the table shrank: {} rows", table.len());
    assert!(
        failures.is_empty(),
        "{} of {} texts are not the contract's:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}
