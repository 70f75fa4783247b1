//! `GET /admin/api/openapi.json`: an OpenAPI 3.1 description of the admin routes (docs/admin-api.md),
//! generated from the router registration itself. Every admin route is registered through
//! `ApiRouter`, whose `get`/`post` take the handler *and* its description (`Doc`) together, so a
//! route cannot be served without its entry nor described without being served. The request body
//! of a route that performs a tool (`= comms_…`) is that tool's own input schema (the one
//! `tools/list` announces), looked up through the `ToolSchemas` the caller passes in (`app.rs`
//! gives `mcp::tools::input_schema`: `http` sits below `mcp` and does not import it). The 200
//! reply's schema is derived (schemars) from the type the handler itself returns,
//! `Result<Json<T>, ApiError>` or, for JSON written by hand, `Result<Written<T>, ApiError>`
//! (`Replies`, `Reply`): a handler cannot change what it answers without the document following.

use std::future::Future;

use axum::handler::Handler;
use axum::{Json, Router};
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// The lookup of a tool's input schema by its name (`mcp::tools::input_schema`).
pub type ToolSchemas = fn(&str) -> Option<Value>;

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

/// How a route is described: who may call it, what it does, its query parameters and its body.
/// Its reply is described by the handler's own return type.
#[derive(Clone, Copy)]
pub struct Doc {
    pub who: &'static str,
    pub summary: &'static str,
    pub query: &'static [Query],
    pub body: Body,
}

/// The schema of a reply type, added to the generator's components.
pub type ReplySchema = fn(&mut SchemaGenerator) -> Schema;

/// One served (method, path), its description and the schema of its 200 reply.
#[derive(Clone, Copy)]
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub doc: Doc,
    pub reply: ReplySchema,
}

/// What a handler answers with: the schema type of the success of its `Result<S, ApiError>`
/// (`S: Reply`), for every arity of extractors the admin routes use.
pub trait Replies<Args> {
    type Reply: JsonSchema;
}

/// A success reply and the type its JSON is described by: `Json<R>` is `R` serialized,
/// `Written<R>` JSON text written by hand in `R`'s form.
pub trait Reply {
    type Schema: JsonSchema;
}

impl<R: JsonSchema> Reply for Json<R> {
    type Schema = R;
}

impl<R: JsonSchema> Reply for Written<R> {
    type Schema = R;
}

/// A reply whose JSON text was written before (the feed writes its pages straight from the rows):
/// served as `application/json`, as `Json` serves, and described by `R`, whose serde form the
/// text must be (the writer's tests hold it to that). The text may come in parts, sent one after
/// the other as one body of their summed length, none copied into another.
pub struct Written<R> {
    parts: Vec<String>,
    form: std::marker::PhantomData<fn() -> R>,
}

impl<R> Written<R> {
    /// `parts`, which joined must be `R`'s JSON.
    pub fn of_parts(parts: Vec<String>) -> Self {
        Self { parts, form: std::marker::PhantomData }
    }
}

impl<R> axum::response::IntoResponse for Written<R> {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue};
        let json = HeaderValue::from_static("application/json");
        let mut parts = self.parts;
        if parts.len() <= 1 {
            return ([(header::CONTENT_TYPE, json)], parts.pop().unwrap_or_default()).into_response();
        }
        let length = HeaderValue::from(parts.iter().map(String::len).sum::<usize>());
        let body = axum::body::Body::from_stream(futures::stream::iter(
            parts.into_iter().map(Ok::<String, std::convert::Infallible>),
        ));
        ([(header::CONTENT_TYPE, json), (header::CONTENT_LENGTH, length)], body).into_response()
    }
}

macro_rules! replies {
    ($($arg:ident),*) => {
        impl<F, Fut, S, $($arg,)*> Replies<($($arg,)*)> for F
        where
            F: FnOnce($($arg),*) -> Fut,
            Fut: Future<Output = Result<S, ApiError>>,
            S: Reply,
        {
            type Reply = S::Schema;
        }
    };
}
replies!();
replies!(A1);
replies!(A1, A2);
replies!(A1, A2, A3);
replies!(A1, A2, A3, A4);
replies!(A1, A2, A3, A4, A5);

/// The schema of `R` as a reference into the components.
pub fn reply_schema<R: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<R>()
}

/// The payload of an MCP tool that a route performs (`= comms_…`): the tool's own result object.
pub struct ToolResult(pub Value);

impl serde::Serialize for ToolResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A tool's payload as a route's reply.
pub fn tool_result(payload: Value) -> Json<ToolResult> {
    Json(ToolResult(payload))
}

impl JsonSchema for ToolResult {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ToolResult".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "The result object of the MCP tool the route performs (docs/tools.md): the same payload as the tool call.",
            "type": "object",
            "properties": {"success": {"type": "boolean"}, "warnings": {"type": "array", "items": {"type": "object"}}},
        })
    }
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

    pub fn get<H, T, A>(mut self, path: &'static str, handler: H, doc: Doc) -> Self
    where
        H: Handler<T, AppState> + Replies<A>,
        T: 'static,
    {
        self.router = self.router.route(path, axum::routing::get(handler));
        self.ops.push(Op { method: "get", path, doc, reply: reply_schema::<H::Reply> });
        self
    }

    pub fn post<H, T, A>(mut self, path: &'static str, handler: H, doc: Doc) -> Self
    where
        H: Handler<T, AppState> + Replies<A>,
        T: 'static,
    {
        self.router = self.router.route(path, axum::routing::post(handler));
        self.ops.push(Op { method: "post", path, doc, reply: reply_schema::<H::Reply> });
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
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorReply"}}}})
}

fn operation(op: &Op, generator: &mut SchemaGenerator, tool_schemas: ToolSchemas) -> Value {
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
            "200": {"description": "OK", "content": {"application/json": {"schema": (op.reply)(generator)}}},
            "400": error("Invalid input"),
            "401": error("Missing or invalid admin token"),
            "403": error("Role, org boundary or IP list"),
            "404": error("Unknown org or agent"),
            "405": error("Method not allowed on this path (see the Allow header)"),
            "413": error("Body over 1 MiB"),
            "429": error("Locked out or rate limited"),
            "500": error("Internal error"),
            "503": error("Unavailable: nothing was done"),
        },
    });
    let body = match op.doc.body {
        Body::None => None,
        Body::Tool(name) => Some(tool_schemas(name).unwrap_or_else(|| json!({"type": "object"}))),
        Body::Schema(schema) => Some(schema()),
    };
    if let Some(schema) = body {
        // A body whose members are all optional may be left out (`JsonBody`: no body is `{}`).
        let required = schema["required"].as_array().is_some_and(|names| !names.is_empty());
        out["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": schema}}});
    }
    if op.method == "post" {
        out["responses"]["409"] = error("Conflict with the current state");
        out["responses"]["415"] = error("Body not application/json");
    }
    out
}

/// The error body every refusal carries (docs/errors.md); a code may add its own details
/// (`limitType`, `current`, `max`, `resetAt`, `rule`, `zone`, …).
#[derive(serde::Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("additionalProperties" = true))]
pub struct ErrorReply {
    pub error: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The offending input field, for `invalid_input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds until a retry may succeed, for `locked_out` and `rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// This document: an OpenAPI 3.1 object.
pub struct OpenApiDocument;

impl JsonSchema for OpenApiDocument {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpenApi".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": {"openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}},
            "additionalProperties": true,
        })
    }
}

/// The generator of the reply schemas: JSON Schema 2020-12 (OpenAPI 3.1's dialect), serialized
/// forms, definitions under `#/components/schemas`.
fn generator() -> SchemaGenerator {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.contract = Contract::Serialize;
    settings.meta_schema = None;
    settings.into_generator()
}

pub const OPENAPI: Doc =
    Doc { who: "anyone who can reach the admin API", summary: "This document", query: &[], body: Body::None };

/// The document's own entry.
pub fn openapi_op(path: &'static str) -> Op {
    Op { method: "get", path, doc: OPENAPI, reply: reply_schema::<OpenApiDocument> }
}

/// The document's own entry asks for no token (docs/admin-api.md): no security, no 401.
fn open_to_anyone(operation: &mut Value) {
    operation["security"] = json!([]);
    if let Some(responses) = operation["responses"].as_object_mut() {
        responses.remove("401");
    }
}

/// The OpenAPI 3.1 document of `ops`; a tool route's body is `tool_schemas(tool)`.
pub fn document(ops: &[Op], tool_schemas: ToolSchemas) -> Value {
    let mut generator = generator();
    generator.subschema_for::<ErrorReply>();
    let mut paths = Map::new();
    for op in ops {
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = operation(op, &mut generator, tool_schemas);
        if op.doc.who == OPENAPI.who {
            open_to_anyone(&mut entry[op.method]);
        }
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "commguard admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Master token (S) or org token (O)"}},
            "schemas": schemas,
        },
        "paths": paths,
    })
}
