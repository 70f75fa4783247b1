//! JSON-RPC 2.0 and the MCP methods commguard answers, shared by both transports:
//! `initialize`, `ping`, `tools/list`, `tools/call`, `logging/setLevel` and notifications.
//! Tool refusals are tool results with `isError: true`; JSON-RPC errors are only for malformed
//! messages (-32700, -32600) and unknown methods (-32601) (docs/mcp.md#tool-results).

use serde_json::{json, Map, Value};

use super::tools::{self, Caller};
use crate::auth::caller::Transport;
use crate::auth::Principal;
use crate::sessions::Session;
use crate::state::AppState;

pub const SSE_VERSIONS: &[&str] = &["2024-11-05"];
pub const STREAMABLE_VERSIONS: &[&str] = &["2025-06-18", "2025-03-26"];

/// One incoming JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
    },
    /// A response from the client (to a server request we never send): accepted and ignored.
    Response,
    /// A member of a batch that is no JSON-RPC message: answered by its own -32600 error (no id),
    /// beside the answers to the others (JSON-RPC 2.0 §6). A body that is one such value is
    /// refused whole (`Malformed`).
    Invalid(String),
}

impl Message {
    /// Whether it is answered: a request, or a batch member that is no message.
    pub fn is_request(&self) -> bool {
        matches!(self, Self::Request { .. } | Self::Invalid(_))
    }
}

/// A request body: one message, or a batch (a JSON array, answered with an array even when it
/// holds one message, as JSON-RPC 2.0 says).
pub struct Parsed {
    pub messages: Vec<Message>,
    pub batch: bool,
}

/// A body that is not a JSON-RPC message or batch. Its text (`Display`) follows `Invalid
/// message: ` on `/messages`; `/mcp` answers it with a JSON-RPC error (`error_response`).
#[derive(Debug, PartialEq)]
pub enum Malformed {
    /// Not JSON (-32700).
    NotJson(String),
    /// JSON, but not a request, notification or response (-32600).
    NotMessage(String),
}

impl Malformed {
    /// The JSON-RPC error that answers it on `/mcp` (with no id: the request's could not be read).
    pub fn error_response(&self) -> Value {
        match self {
            Self::NotJson(_) => error_response(Value::Null, -32700, &self.to_string()),
            Self::NotMessage(_) => error_response(Value::Null, -32600, &format!("Invalid Request: {self}")),
        }
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotJson(detail) => write!(f, "Parse error: {detail}"),
            Self::NotMessage(detail) => f.write_str(detail),
        }
    }
}

/// Parses one message or a batch.
pub fn parse(body: &[u8]) -> Result<Parsed, Malformed> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let parsed = match value {
        Value::Array(items) if !items.is_empty() => {
            let member = |item| match message(item) {
                Ok(message) => message,
                Err(malformed) => Message::Invalid(malformed.to_string()),
            };
            Parsed { messages: items.into_iter().map(member).collect(), batch: true }
        }
        Value::Array(_) => return Err(Malformed::NotMessage("empty batch".into())),
        single => Parsed { messages: vec![message(single)?], batch: false },
    };
    Ok(parsed)
}

fn message(value: Value) -> Result<Message, Malformed> {
    let invalid = |detail: &str| Err(Malformed::NotMessage(detail.into()));
    let Value::Object(mut map) = value else {
        return invalid("a JSON-RPC message must be an object");
    };
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("jsonrpc must be \"2.0\"");
    }
    match (map.remove("method"), map.remove("id")) {
        (Some(Value::String(method)), Some(id)) if id.is_string() || id.is_number() => {
            Ok(Message::Request { id, method, params: map.remove("params").unwrap_or(Value::Null) })
        }
        (Some(Value::String(_)), Some(_)) => invalid("id must be a string or a number"),
        (Some(Value::String(method)), None) => Ok(Message::Notification { method }),
        (None, Some(_)) if map.contains_key("result") || map.contains_key("error") => Ok(Message::Response),
        _ => invalid("not a request, notification or response"),
    }
}

pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Answers one message for `principal` (the request's principal) in `session`; `None` for
/// notifications and responses.
pub async fn handle(
    app: &AppState,
    session: &Session,
    principal: &Principal,
    request_id: &str,
    message: Message,
) -> Option<Value> {
    let (id, method, mut params) = match message {
        Message::Request { id, method, params } => (id, method, params),
        Message::Invalid(detail) => {
            return Some(error_response(Value::Null, -32600, &format!("Invalid Request: {detail}")))
        }
        Message::Notification { .. } | Message::Response => return None,
    };
    session.touch();
    let result = match method.as_str() {
        "initialize" => initialize(app, session, &params),
        "ping" => json!({}),
        "logging/setLevel" => json!({}),
        "tools/list" => json!({ "tools": tools::list(principal.role()) }),
        "tools/call" => {
            let caller =
                Caller { principal, claim: session.claim.as_deref(), transport: session.transport, request_id };
            let arguments = params.get_mut("arguments").map_or(Value::Null, Value::take);
            let name = params.get("name").and_then(Value::as_str).unwrap_or_default();
            let outcome = tools::call(app, &caller, name, arguments).await;
            let structured = session.protocol.read().expect("protocol lock").as_deref() == Some("2025-06-18");
            tool_result(outcome, request_id, structured, app.config.demo_mode)
        }
        _ => return Some(error_response(id, -32601, &format!("Method not found: {method}"))),
    };
    Some(result_response(id, result))
}

fn initialize(app: &AppState, session: &Session, params: &Value) -> Value {
    let supported = match session.transport {
        Transport::Sse => SSE_VERSIONS,
        Transport::Streamable => STREAMABLE_VERSIONS,
    };
    let requested = params.get("protocolVersion").and_then(Value::as_str).unwrap_or_default();
    let version = supported.iter().find(|v| **v == requested).copied().unwrap_or(supported[0]);
    *session.protocol.write().expect("protocol lock") = Some(version.to_string());
    let _ = app;
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false }, "logging": {} },
        "serverInfo": { "name": "commguard", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// A tool outcome as an MCP tool result (docs/mcp.md#tool-results).
fn tool_result(
    outcome: Result<Value, crate::error::ApiError>,
    request_id: &str,
    structured: bool,
    demo: bool,
) -> Value {
    match outcome {
        Ok(mut value) => {
            if demo {
                if let Value::Object(map) = &mut value {
                    map.insert("demo".into(), Value::Bool(true));
                }
            }
            let mut result = Map::new();
            result.insert("content".into(), json!([{ "type": "text", "text": value.to_string() }]));
            result.insert("isError".into(), Value::Bool(false));
            if structured && value.is_object() {
                result.insert("structuredContent".into(), value);
            }
            Value::Object(result)
        }
        Err(e) => json!({
            "content": [{ "type": "text", "text": e.body(Some(request_id)).to_string() }],
            "isError": true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified_and_malformed_ones_refused() {
        let one = |body: &[u8]| {
            let parsed = parse(body).unwrap();
            assert!(!parsed.batch);
            parsed.messages.into_iter().next().unwrap()
        };
        assert!(
            matches!(one(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Message::Request { method, .. } if method == "ping")
        );
        let note = one(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(note, Message::Notification { method: "notifications/initialized".into() });
        assert_eq!(one(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#), Message::Response);
        let code = |body: &[u8]| parse(body).err().map(|m| m.error_response()["error"]["code"].clone());
        assert_eq!(code(b"{"), Some(json!(-32700)));
        assert_eq!(code(br#"{"id":1,"method":"ping"}"#), Some(json!(-32600)));
        assert_eq!(code(br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#), Some(json!(-32600)));
        assert_eq!(code(b"[]"), Some(json!(-32600)));
        let two = parse(br#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","id":2,"method":"b"}]"#).unwrap();
        assert_eq!((two.messages.len(), two.batch), (2, true));
        // A batch of one is still a batch: its reply is an array.
        let single = parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap();
        assert_eq!((single.messages.len(), single.batch), (1, true));
        // A batch member that is no message is answered on its own; the others still run.
        let mixed =
            parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"1.0","id":2,"method":"ping"},7]"#).unwrap();
        assert!(matches!(mixed.messages[0], Message::Request { .. }));
        assert_eq!(mixed.messages[1], Message::Invalid("jsonrpc must be \"2.0\"".into()));
        assert_eq!(mixed.messages[2], Message::Invalid("a JSON-RPC message must be an object".into()));
        assert!(mixed.messages.iter().all(Message::is_request), "each is answered");
    }
}
