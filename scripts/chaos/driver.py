"""Sends SMS from CHAOS_SESSIONS MCP sessions for CHAOS_SECONDS and prints, as JSON, every
message id the server acknowledged and every id it answered `unconfirmed`. Standard library only.
A session whose server vanished reconnects (a fresh session) and carries on."""
import json, os, threading, time, urllib.request, urllib.error

URL, TOKEN = os.environ["CHAOS_URL"], os.environ["CHAOS_TOKEN"]
SECONDS, SESSIONS = float(os.environ["CHAOS_SECONDS"]), int(os.environ["CHAOS_SESSIONS"])
TO = "+12025550100"


def post(body, session=None, token=TOKEN, timeout=30):
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "authorization": f"Bearer {token}"}
    if session:
        headers["mcp-session-id"] = session
    request = urllib.request.Request(URL + "/mcp", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        text = reply.read().decode()
        if text.startswith("event:") or text.startswith("data:"):
            text = next(l[5:] for l in text.splitlines() if l.startswith("data:"))
        return reply.headers.get("mcp-session-id"), json.loads(text) if text else None


def open_session(token=TOKEN):
    session, _ = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}, token=token)
    return session


def tool(session, name, args, token=TOKEN):
    _, reply = post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": args}}, session, token)
    result = reply["result"]
    return result["isError"], json.loads(result["content"][0]["text"])


def retrying(fn):
    for _ in range(600):
        try:
            return fn()
        except (urllib.error.URLError, ConnectionError, OSError, KeyError, TimeoutError):
            time.sleep(0.1)
    raise SystemExit("server never came back")


# Set-up: an org, an agent, consent (retried across restarts).
master = retrying(open_session)
org = retrying(lambda: tool(master, "comms_create_organization", {"name": "Chaos", "slug": f"chaos-{int(time.time())}", "a2pRegistered": True}))[1]
admin_token = org["adminToken"]
admin = retrying(lambda: open_session(admin_token))
agent = retrying(lambda: tool(admin, "comms_provision_channels", {"displayName": "Chaos", "capabilities": {"phone": True}}, admin_token))[1]
agent_token = agent["securityToken"]
me = retrying(lambda: open_session(agent_token))
retrying(lambda: tool(me, "comms_record_consent", {"contactAddress": TO, "channel": "sms"}, agent_token))

acked, unconfirmed, errors, lock = [], [], {}, threading.Lock()
# The longest send call that got an HTTP answer (success, refusal or 5xx): a request must fail
# fast while the database is away, not hang. Calls that got no answer (server killed) are not
# requests the server could answer, and are left out.
longest = [0.0]
deadline = time.time() + SECONDS


def worker(n):
    session = None
    while time.time() < deadline:
        try:
            if session is None:
                session = open_session(agent_token)
            started = time.monotonic()
            try:
                is_error, reply = tool(session, "comms_send_message", {"to": TO, "body": f"chaos {n}"}, agent_token)
            except urllib.error.HTTPError:
                with lock:
                    longest[0] = max(longest[0], time.monotonic() - started)
                raise
            with lock:
                longest[0] = max(longest[0], time.monotonic() - started)
                if not is_error:
                    acked.append(reply["messageId"])
                elif reply.get("status") == "unconfirmed":
                    unconfirmed.append(reply["messageId"])
                else:
                    errors[reply.get("code")] = errors.get(reply.get("code"), 0) + 1
        except urllib.error.HTTPError as e:
            session = None if e.code in (404, 401) else session
            with lock:
                errors[f"http_{e.code}"] = errors.get(f"http_{e.code}", 0) + 1
            time.sleep(0.05)
        except (urllib.error.URLError, ConnectionError, OSError, TimeoutError, KeyError, ValueError):
            session = None
            with lock:
                errors["no_answer"] = errors.get("no_answer", 0) + 1
            time.sleep(0.05)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(SESSIONS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"agentId": agent["agentId"], "acked": acked, "unconfirmed": unconfirmed, "errors": errors,
                  "longestAnsweredSeconds": round(longest[0], 3)}))
