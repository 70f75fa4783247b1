//! `GET /admin/api/openapi.json`: an OpenAPI 3.1 description of the admin routes (CONTRACT §12),
//! generated from the router registration itself. Every admin route is registered through
//! `ApiRouter`, whose `get`/`post` take the handler *and* its description (`Doc`) together, so a
//! route cannot be served without its entry nor described without being served. The request body
//! of a route that performs a tool (`= comms_…`) is that tool's own input schema (the one
//! `tools/list` announces); replies refer to the component schemas below.

use axum::handler::Handler;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::state::AppState;

/// A query parameter: name, required, JSON-schema type, description.
pub type Query = (&'static str, bool, &'static str, &'static str);

pub const CURSOR: Query = ("cursor", false, "string", "opaque; the nextCursor of the previous page");
pub const LIMIT: Query = ("limit", false, "integer", "items per page, 1-500 (50)");
pub const AS_OF: Query = ("as_of", false, "string", "RFC 3339: the view from the events that occurred at or before it");
pub const ORG: Query = ("orgId", false, "string", "super-admin: one org (org tokens: their own)");

/// The request body a route reads.
#[derive(Clone, Copy)]
pub enum Body {
    None,
    /// The input schema of the MCP tool the route performs.
    Tool(&'static str),
    /// A body of its own.
    Schema(fn() -> Value),
}

/// How a route is described: who may call it, what it does, its query parameters, its body and
/// the component schema of its 200 reply.
#[derive(Clone, Copy)]
pub struct Doc {
    pub who: &'static str,
    pub summary: &'static str,
    pub query: &'static [Query],
    pub body: Body,
    pub reply: &'static str,
}

/// One served (method, path) and its description.
#[derive(Clone, Copy)]
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub doc: Doc,
}

/// A router whose every route carries its description.
#[derive(Default)]
pub struct ApiRouter {
    router: Router<AppState>,
    ops: Vec<Op>,
}

impl ApiRouter {
    pub fn new() -> Self {
        Self { router: Router::new(), ops: Vec::new() }
    }

    pub fn get<H: Handler<T, AppState>, T: 'static>(mut self, path: &'static str, handler: H, doc: Doc) -> Self {
        self.router = self.router.route(path, axum::routing::get(handler));
        self.ops.push(Op { method: "get", path, doc });
        self
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(mut self, path: &'static str, handler: H, doc: Doc) -> Self {
        self.router = self.router.route(path, axum::routing::post(handler));
        self.ops.push(Op { method: "post", path, doc });
        self
    }

    pub fn merge(mut self, other: ApiRouter) -> Self {
        self.router = self.router.merge(other.router);
        self.ops.extend(other.ops);
        self
    }

    pub fn into_parts(self) -> (Router<AppState>, Vec<Op>) {
        (self.router, self.ops)
    }
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn operation(op: &Op) -> Value {
    let mut parameters: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    parameters.extend(op.doc.query.iter().map(|(name, required, kind, description)| {
        json!({"name": name, "in": "query", "required": required, "description": description, "schema": {"type": kind}})
    }));
    let id: String =
        format!("{}{}", op.method, op.path).chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let mut out = json!({
        "operationId": id,
        "summary": op.doc.summary,
        "description": format!("Who: {}", op.doc.who),
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", op.doc.reply)}}}},
            "400": error("Invalid input"),
            "401": error("Missing or invalid admin token"),
            "403": error("Role, org boundary or IP list"),
            "404": error("Unknown org or agent"),
            "429": error("Locked out or rate limited"),
            "503": error("Unavailable: nothing was done"),
        },
    });
    let body = match op.doc.body {
        Body::None => None,
        Body::Tool(name) => Some(crate::mcp::tools::input_schema(name).unwrap_or_else(|| json!({"type": "object"}))),
        Body::Schema(schema) => Some(schema()),
    };
    if let Some(schema) = body {
        out["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
        out["responses"]["409"] = error("Conflict with the current state");
    }
    out
}

/// An object schema with `properties` (JSON-schema types by name; `$ref:X` for a component).
fn object(properties: &[(&str, &str)]) -> Value {
    let props: Map<String, Value> = properties
        .iter()
        .map(|(name, kind)| {
            let schema = match kind.strip_prefix("$ref:") {
                Some(component) => json!({"$ref": format!("#/components/schemas/{component}")}),
                None => match kind.strip_suffix("[]") {
                    Some(item) if item.starts_with('#') => {
                        json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{}", &item[1..])}})
                    }
                    Some(item) => json!({"type": "array", "items": {"type": item}}),
                    None => json!({"type": kind.split('|').collect::<Vec<_>>()}),
                },
            };
            (name.to_string(), schema)
        })
        .collect();
    json!({"type": "object", "properties": props})
}

/// The reply schemas the routes refer to.
fn components() -> Value {
    json!({
        "Error": object(&[("error", "string"), ("code", "string"), ("field", "string"), ("requestId", "string")]),
        "Result": object(&[("success", "boolean"), ("warnings", "object[]")]),
        "Me": object(&[("role", "string"), ("orgId", "string|null"), ("org", "object|null")]),
        "Org": object(&[("orgId", "string"), ("name", "string"), ("mode", "string")]),
        "OrgPage": object(&[("orgs", "#Org[]"), ("nextCursor", "string|null")]),
        "OrgMode": object(&[("success", "boolean"), ("orgId", "string"), ("mode", "string")]),
        "OrgSettings": object(&[("success", "boolean"), ("spendToday", "number"), ("spendMonth", "number")]),
        "Token": object(&[("success", "boolean"), ("token", "string"), ("revokedCount", "integer")]),
        "Agent": object(&[("agentId", "string"), ("orgId", "string"), ("status", "string")]),
        "AgentPage": object(&[("agents", "#Agent[]"), ("nextCursor", "string|null")]),
        "Tokens": object(&[("tokens", "object[]")]),
        "Providers": object(&[("providers", "object[]")]),
        "Consent": object(&[("asOf", "string|null"), ("nextCursor", "string|null")]),
        "Limits": object(&[("tier", "string|null"), ("overrides", "object|null"), ("effective", "object|null"), ("orgCaps", "object|null"), ("asOf", "string|null")]),
        "Usage": object(&[]),
        "Dnc": object(&[("nextCursor", "string|null")]),
        "Envelope": object(&[("position", "integer"), ("eventId", "string"), ("aggregateType", "string"), ("aggregateId", "string"),
            ("sequence", "integer"), ("eventType", "string"), ("eventVersion", "string"), ("occurredAt", "string"), ("orgId", "string|null"),
            ("actor", "object"), ("requestId", "string|null"), ("transport", "string|null"), ("provenance", "object|array|null"),
            ("payload", "object"), ("prevHash", "string"), ("hash", "string"), ("redactions", "object[]"), ("metadata", "object")]),
        "EventPage": object(&[("events", "#Envelope[]"), ("nextAfter", "integer"), ("headPosition", "integer|null")]),
        "AuditPage": object(&[("items", "object[]"), ("nextCursor", "string|null")]),
        "Clock": object(&[("now", "string")]),
        "Anomaly": object(&[("rule", "string"), ("subjectKind", "string"), ("subjectId", "string"), ("orgId", "string|null"),
            ("windowStart", "string"), ("windowEnd", "string"), ("value", "number"), ("previous", "integer"),
            ("limitType", "string"), ("threshold", "object"), ("firing", "boolean")]),
        "AnomalyPage": object(&[("anomalies", "#Anomaly[]"), ("nextCursor", "string|null")]),
        "OpenApi": object(&[("openapi", "string"), ("info", "object"), ("paths", "object")]),
    })
}

pub const OPENAPI: Doc = Doc {
    who: "anyone who can reach the admin API",
    summary: "This document",
    query: &[],
    body: Body::None,
    reply: "OpenApi",
};

/// The OpenAPI 3.1 document of `ops`.
pub fn document(ops: &[Op]) -> Value {
    let mut paths = Map::new();
    for op in ops {
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = operation(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "commguard admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Master token (S) or org token (O)"}},
            "schemas": components(),
        },
        "paths": paths,
    })
}
