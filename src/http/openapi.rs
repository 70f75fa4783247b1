//! `GET /admin/api/openapi.json`: an OpenAPI 3.1 description of the admin routes this build
//! serves (CONTRACT §12), generated from one table so it cannot list a route that does not exist.

use axum::Json;
use serde_json::{json, Map, Value};

/// (method, path, who may call, summary) for every admin route of `admin_api::routes`.
const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("get", "/admin/api/me", "O S", "The caller's role and organization"),
    ("get", "/admin/api/orgs", "O (own) S", "Organizations, a page at a time"),
    ("post", "/admin/api/orgs", "S", "Create an organization (= comms_create_organization)"),
    ("get", "/admin/api/orgs/{orgId}", "O (own) S", "One organization"),
    ("post", "/admin/api/orgs/{orgId}/approve", "S", "Approve into production ({kycNote})"),
    ("post", "/admin/api/orgs/{orgId}/suspend", "S", "Suspend ({reason}); closes the org's sessions"),
    ("post", "/admin/api/orgs/{orgId}/unsuspend", "S", "Restore the previous mode"),
    ("post", "/admin/api/orgs/{orgId}/settings", "S; O own caps", "Registration, capacity and spend caps"),
    ("post", "/admin/api/orgs/{orgId}/rotate-token", "O (own) S", "Rotate the org's admin token"),
    ("get", "/admin/api/agents", "O S", "Agents with status, tier, limits and billing, a page at a time"),
    ("get", "/admin/api/agents/{agentId}", "O S", "One agent: status, tier, limits and billing"),
    ("get", "/admin/api/agents/{agentId}/tokens", "O S", "The agent's active tokens (no hashes)"),
    ("post", "/admin/api/agents/{agentId}/regenerate-token", "O S", "Rotate the agent's token"),
    ("post", "/admin/api/agents/{agentId}/blocked-channels", "O S", "Block channels ({blockedChannels})"),
    ("post", "/admin/api/agents/{agentId}/limits", "S", "= comms_set_agent_limits"),
    ("post", "/admin/api/agents/{agentId}/billing", "S", "= comms_set_billing_config"),
    ("get", "/admin/api/providers", "O (own, names only) S", "Registered provider credentials, names only"),
    ("post", "/admin/api/providers", "S", "= comms_register_provider"),
    ("get", "/admin/api/consent", "O S", "Consent records of a contact and its DNC state, now or as of an instant"),
    (
        "get",
        "/admin/api/limits",
        "O S",
        "An agent's tier, overrides, effective limits and org caps, now or as of an instant",
    ),
    ("get", "/admin/api/usage", "O S", "Actions and spend per agent over a period or from/to"),
    ("get", "/admin/api/alerts", "O (its agents) S (also IP alerts)", "Alerts raised by the §14 rules, newest first"),
    ("get", "/admin/api/anomalies", "O (its agents) S (also IPs)", "Each rule's current window values and thresholds"),
    ("get", "/admin/api/dnc", "O S", "= comms_dnc_list"),
    ("post", "/admin/api/dnc", "O S", "= comms_dnc_add"),
    ("post", "/admin/api/dnc/remove", "O S", "= comms_dnc_remove"),
    (
        "get",
        "/admin/api/audit",
        "O (own org) S",
        "The audit view (?agentId&subject&from&to&eventType&outcome&actorKind&orgId&cursor&limit)",
    ),
    (
        "get",
        "/admin/api/events",
        "O (own org) S; raw S only",
        "§11.1 envelopes in global commit order (?after&limit&orgId&raw) → {events,nextAfter,headPosition}",
    ),
    (
        "post",
        "/admin/api/test/clock",
        "S, with COMMGUARD_TEST_CLOCK",
        "Set ({now}) or advance ({advanceSeconds}) the service clock",
    ),
];

/// A query parameter: (name, required, description).
type Query = (&'static str, bool, &'static str);

/// The query parameters of the reads that take any.
const PAGE: [Query; 2] =
    [("cursor", false, "opaque; the nextCursor of the previous page"), ("limit", false, "items per page, 1-500 (50)")];
const AS_OF: Query = ("as_of", false, "RFC 3339: the view from the events that occurred at or before it");
const ORG: Query = ("orgId", false, "super-admin: one org (org tokens: their own)");
const QUERIES: &[(&str, &[Query])] = &[
    ("/admin/api/orgs", &[ORG, PAGE[0], PAGE[1]]),
    ("/admin/api/agents", &[ORG, PAGE[0], PAGE[1]]),
    (
        "/admin/api/consent",
        &[
            ("contact", true, "E.164 number or email"),
            ("agentId", false, ""),
            ("channel", false, "sms | voice | email | whatsapp | recording"),
            ORG,
            AS_OF,
            PAGE[0],
            PAGE[1],
        ],
    ),
    ("/admin/api/limits", &[("agentId", true, ""), AS_OF]),
    (
        "/admin/api/usage",
        &[
            ("agentId", false, "one agent (else every agent in scope)"),
            ORG,
            ("period", false, "today | week | month | all (today; all when from or to is given)"),
            ("from", false, "RFC 3339, taken down to its UTC hour"),
            ("to", false, "RFC 3339, exclusive"),
        ],
    ),
    ("/admin/api/dnc", &[ORG, ("type", false, "phone | email"), PAGE[0], PAGE[1]]),
    (
        "/admin/api/alerts",
        &[
            ("severity", false, "HIGH | MEDIUM | LOW"),
            ("rule", false, "volume_spike | brute_force | rapid_rotation | brute_force_lockout | rate_limit | spend_threshold"),
            ("since", false, "RFC 3339: alerts raised at or after it"),
            ORG,
            PAGE[0],
            PAGE[1],
        ],
    ),
    (
        "/admin/api/anomalies",
        &[("rule", false, "volume_spike | brute_force | rapid_rotation"), ORG, PAGE[0], PAGE[1]],
    ),
];

fn operation(path: &str, who: &str, summary: &str, mutation: bool) -> Value {
    let mut parameters: Vec<Value> = path
        .split('/')
        .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if !mutation {
        let query = QUERIES.iter().filter(|(p, _)| *p == path).flat_map(|(_, params)| params.iter());
        parameters.extend(query.map(|(name, required, description)| {
            json!({"name": name, "in": "query", "required": required, "description": description, "schema": {"type": "string"}})
        }));
    }
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut op = json!({
        "summary": summary,
        "description": format!("Who: {who}"),
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            "401": error("Missing or invalid admin token"),
            "403": error("Role, org boundary or IP list"),
            "404": error("Unknown org or agent"),
            "429": error("Locked out or rate limited"),
        },
    });
    if mutation {
        op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
        op["responses"]["400"] = error("Invalid input");
        op["responses"]["409"] = error("Conflict with the current state");
    }
    op
}

pub async fn document() -> Json<Value> {
    let mut paths = Map::new();
    for (method, path, who, summary) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = operation(path, who, summary, *method == "post");
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "commguard admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Master token (S) or org token (O)"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "code"], "properties": {
                "error": {"type": "string"}, "code": {"type": "string"}, "requestId": {"type": "string"}}}},
        },
        "paths": paths,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_route_is_described_with_its_path_parameters() {
        let Json(doc) = document().await;
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(), ROUTES.len());
        assert_eq!(doc["paths"]["/admin/api/orgs/{orgId}/approve"]["post"]["parameters"][0]["name"], "orgId");
        assert!(
            doc["paths"]["/admin/api/orgs"]["get"].is_object() && doc["paths"]["/admin/api/orgs"]["post"].is_object()
        );
        let limits = &doc["paths"]["/admin/api/limits"]["get"]["parameters"];
        assert_eq!((limits[0]["name"].as_str(), limits[0]["required"].as_bool()), (Some("agentId"), Some(true)));
        assert_eq!(limits[1]["name"], "as_of");
        assert!(QUERIES.iter().all(|(p, _)| ROUTES.iter().any(|(m, r, _, _)| *m == "get" && r == p)));
    }
}
