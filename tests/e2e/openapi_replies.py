"""Every documented GET of the admin API answers with a body that its own OpenAPI document
describes: the 200 reply against the schema derived from the handler's type, refusals against
the error schema. Draft 2020-12 validation (jsonschema, as openapi-spec-validator uses it), with
`additionalProperties: false` added to every object schema of the replies, so that a field the
document does not name fails as surely as a missing one.

Usage: openapi_replies.py BASE_URL MASTER_TOKEN ORG_TOKEN ORG_ID AGENT_ID CONTACT"""
import copy
import json
import sys
import urllib.error
import urllib.request

from jsonschema import Draft202012Validator

base, master, org_token, org_id, agent_id, contact = sys.argv[1:7]


def get(path, token):
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def closed(schema):
    """The schema with every object closed to fields it does not name."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


status, document = get("/admin/api/openapi.json", master)
assert status == 200, document
components = closed(copy.deepcopy(document["components"]))
# A flattened struct (allOf) cannot be closed field by field: keep those open.
for name, schema in components["schemas"].items():
    if "allOf" in json.dumps(schema):
        components["schemas"][name] = json.loads(json.dumps(document["components"]["schemas"][name]))

samples = {"contact": contact, "agentId": agent_id}
checked = 0
for path, item in sorted(document["paths"].items()):
    op = item.get("get")
    if op is None:
        continue
    concrete = path.replace("{orgId}", org_id).replace("{agentId}", agent_id)
    query = "&".join(f"{p['name']}={urllib.request.quote(samples[p['name']])}"
                     for p in op.get("parameters", []) if p["in"] == "query" and p["required"])
    variants = [concrete + ("?" + query if query else "")]
    if path == "/admin/api/events":
        variants.append(concrete + "?raw=true&limit=1000")
    if path == "/admin/api/consent":
        variants.append(concrete + "?" + query + "&as_of=2020-01-01T00:00:00Z")
    if path == "/admin/api/audit":
        variants.append(concrete + "?outcome=nonsense")
    for url in variants:
        for who, token in (("master", master), ("org", org_token)):
            status, body = get(url, token)
            response = op["responses"].get(str(status))
            assert response is not None, f"GET {url} as {who}: status {status} is not documented: {body}"
            schema = dict(response["content"]["application/json"]["schema"], components=components)
            errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.path))
            assert not errors, f"GET {url} as {who} ({status}): {errors[0].message} at {list(errors[0].path)}"
            checked += 1
print(f"PASS {checked} replies match their documented schemas")
