"""`scripts/chaos.sh api`: schemathesis over /admin/api/openapi.json against a live server, once
with the master token and once with an org token, every documented route, bounded by
--max-examples per operation and a time limit per run. Checks (st_hooks.py): no 5xx (but a 502
from a provider that cannot be reached), every response matches its documented schema and
content type, and a 4xx appends no event but its refusal records. Prints the cases run and the failures per run; exits non-zero on any failure.

Environment: CHAOS_URL, CHAOS_TOKEN (master), CHAOS_PSQL, CHAOS_DB, CHAOS_ST (the schemathesis
executable), CHAOS_EXAMPLES, CHAOS_SECONDS (per run), CHAOS_OUT (a directory for the reports)."""
import json, os, re, subprocess, sys, time, urllib.request

URL, MASTER = os.environ["CHAOS_URL"], os.environ["CHAOS_TOKEN"]
ST, OUT = os.environ["CHAOS_ST"], os.environ["CHAOS_OUT"]
EXAMPLES, SECONDS = os.environ.get("CHAOS_EXAMPLES", "20"), int(os.environ.get("CHAOS_SECONDS", "300"))
CHECKS = "no_server_error,response_schema_conformance,content_type_conformance,no_state_change_on_4xx"


def mcp(body, token, session=None):
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "authorization": f"Bearer {token}"}
    if session:
        headers["mcp-session-id"] = session
    request = urllib.request.Request(URL + "/mcp", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read().decode()
        if text.startswith("event:") or text.startswith("data:"):
            text = next(l[5:] for l in text.splitlines() if l.startswith("data:"))
        return reply.headers.get("mcp-session-id"), json.loads(text) if text else None


def tool(token, name, args):
    session, _ = mcp({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}, token)
    _, reply = mcp({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": args}}, token, session)
    result = reply["result"]
    assert not result["isError"], result
    return json.loads(result["content"][0]["text"])


def organization(name):
    """An organization with an agent that sent a message: state for the routes to find."""
    org = tool(MASTER, "comms_create_organization", {"name": name, "slug": f"{name.lower()}-{int(time.time())}", "a2pRegistered": True})
    agent = tool(org["adminToken"], "comms_provision_channels", {"displayName": name, "capabilities": {"phone": True}})
    tool(agent["securityToken"], "comms_record_consent", {"contactAddress": "+12025550100", "channel": "sms"})
    tool(agent["securityToken"], "comms_send_message", {"to": "+12025550100", "body": "hello"})
    return org, agent


HERE = os.path.dirname(os.path.abspath(__file__))


def run(label, token, config, extra_env):
    report = os.path.join(OUT, f"{label}.xml")
    command = [ST, "--no-color", *config, "run", f"{URL}/admin/api/openapi.json", "--url", URL,
               "-H", f"Authorization: Bearer {token}", "--checks", CHECKS, "--max-examples", EXAMPLES,
               "--workers", "1", "--seed", "20", "--max-time", str(SECONDS), "--request-timeout", "10",
               "--generation-database", "none", "--report", "junit", "--report-junit-path", report]
    started = time.time()
    head = subprocess.run([os.environ["CHAOS_PSQL"], "-qAt", os.environ["CHAOS_DB"], "-c",
                           "SELECT COALESCE(MAX(position), 0) FROM events"], check=True, capture_output=True, text=True)
    env = {**os.environ, **extra_env, "SCHEMATHESIS_HOOKS": "st_hooks", "PYTHONPATH": HERE,
           "CHAOS_START_POSITION": head.stdout.strip()}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 120, env=env, cwd=OUT)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        output, code = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    open(os.path.join(OUT, f"{label}.log"), "w").write(output)
    tail = output[output.rfind("Test cases:"):] if "Test cases:" in output else output[-2000:]
    failures = sorted(set(re.findall(r"^\s*(?:❌|- )(.*(?:failed|error).*)$", output, re.M)))
    print(f"== {label} token: exit {code} in {time.time() - started:.0f}s (log {OUT}/{label}.log)")
    print("\n".join(line for line in tail.splitlines()[:3] if line.strip()))
    for line in failures[:20]:
        print(f"   {line.strip()}")
    return code == 0


# The master run works on one organization (its ids in the paths: schemathesis.toml); the org
# run on another, with that organization's token and generated ids, so whatever the master run
# did to the first (suspend, rotate) does not end the second.
org, agent = organization("Master")
ok = run("master", MASTER, ["--config-file", os.path.join(HERE, "schemathesis.toml")],
         {"CHAOS_ORG_ID": org["orgId"], "CHAOS_AGENT_ID": agent["agentId"]})
org, agent = organization("Tenant")
ok &= run("org", org["adminToken"], [], {})
sys.exit(0 if ok else 1)
