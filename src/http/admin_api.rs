//! Every `/admin/api/*` route in one router: the OpenAPI document, then the directory, compliance,
//! auditor, view and erasure routes behind the refusal-recording middleware (`admin::record_refusals`). Each is
//! registered with its description (`openapi::ApiRouter`), and the document is built from those.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

use super::openapi::{self, ApiRouter, Op};
use crate::state::AppState;

pub const OPENAPI_PATH: &str = "/admin/api/openapi.json";

/// The admin routes and the description of each, the document's own entry included.
pub fn described() -> (Router<AppState>, Vec<Op>) {
    let (router, mut ops) = ApiRouter::new()
        .merge(super::directory_api::routes())
        .merge(super::compliance_api::routes())
        .merge(super::audit_api::routes())
        .merge(super::views_api::routes())
        .merge(super::erasure_api::routes())
        .merge(super::alerts_api::routes())
        .merge(super::anomalies_api::routes())
        .merge(super::chains_api::routes())
        .into_parts();
    ops.insert(0, openapi::openapi_op(OPENAPI_PATH));
    (router, ops)
}

pub fn routes(app: AppState) -> Router<AppState> {
    let (routes, ops) = described();
    let document = Arc::new(openapi::document(&ops));
    let documented = Router::new().route(OPENAPI_PATH, get(move || async move { Json(document.as_ref().clone()) }));
    documented.merge(routes.layer(axum::middleware::from_fn_with_state(app, super::admin::record_refusals)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::openapi::{document, Body};

    fn ops() -> Vec<Op> {
        described().1
    }

    #[test]
    fn every_route_is_described_with_its_parameters_and_schemas() {
        let ops = ops();
        let doc = document(&ops);
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(), ops.len());
        assert_eq!(doc["paths"]["/admin/api/orgs/{orgId}/approve"]["post"]["parameters"][0]["name"], "orgId");
        let limits = &doc["paths"]["/admin/api/limits"]["get"]["parameters"];
        assert_eq!((limits[0]["name"].as_str(), limits[0]["required"].as_bool()), (Some("agentId"), Some(true)));
        // A tool route's body is the tool's own input schema.
        let dnc = &doc["paths"]["/admin/api/agents/{agentId}/limits"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert_eq!(*dnc, crate::mcp::tools::input_schema("comms_set_agent_limits").unwrap());
        // Every reply is a defined component, derived from the handler's own reply type.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for op in &ops {
            let reply = &doc["paths"][op.path][op.method]["responses"]["200"]["content"]["application/json"]["schema"];
            let name = reply["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/"));
            assert!(name.is_some_and(|n| schemas.contains_key(n)), "{} {}: {reply}", op.method, op.path);
            if let Body::Tool(name) = op.doc.body {
                assert!(crate::mcp::tools::input_schema(name).is_some(), "{name} is a tool");
            }
        }
        // The feed's envelope is the type the handler serializes: its fields, required, in camelCase.
        let envelope = &schemas["Envelope"];
        let required: Vec<&str> =
            envelope["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for field in ["position", "eventId", "aggregateType", "sequence", "payload", "prevHash", "hash", "redactions"] {
            assert!(required.contains(&field), "{field} in {required:?}");
        }
        assert!(!required.contains(&"metadata"), "metadata is raw=true only");
        assert_eq!(schemas["AgentAdminView"]["properties"]["limits"]["$ref"], "#/components/schemas/LimitsView");
    }
}
