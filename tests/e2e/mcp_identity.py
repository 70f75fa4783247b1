"""Identity and authorization over one MCP transport (docs/mcp.md, docs/security.md, docs/tools.md#catalogue, docs/errors.md, docs/admin-api.md, docs/http.md#hardening).

Usage: COMMGUARD_URL=... COMMGUARD_MASTER_TOKEN=... mcp_identity.py --transport sse|streamable

Every org, slug and agent is new to this run, so both transport runs can share one server.
Exit 0 = every step passed; otherwise a traceback and `FAIL <step>`.
"""

from __future__ import annotations

import argparse
import os
import re
import uuid
from dataclasses import dataclass

import httpx2

import cg
from cg import expect, expect_eq, expect_http, expect_ok, expect_refusal, step

MASTER_TOOLS = {"comms_ping", "comms_create_organization", "comms_list_organizations", "comms_provision_channels",
                "comms_deprovision_channels", "comms_get_channel_status", "comms_rotate_token"}
ORG_TOOLS = {"comms_ping", "comms_provision_channels", "comms_deprovision_channels", "comms_get_channel_status",
             "comms_rotate_token"}
AGENT_TOOLS = {"comms_ping", "comms_get_channel_status", "comms_rotate_token"}
NOT_FOR_AGENTS = cg.SUPER_TOOLS | cg.ADMIN_TOOLS


@dataclass
class Holder:
    """An org or an agent with its current token."""
    id: str
    token: str


@dataclass
class World:
    t: str  # transport
    master: str
    run: str  # suffix shared by this run's slugs
    org_a: Holder | None = None
    org_b: Holder | None = None
    agent1: Holder | None = None
    agent2: Holder | None = None


def not_in_org(agent_id: str) -> str:
    return f'Agent "{agent_id}" does not belong to your organization'


# ---------------------------------------------------------------- steps

async def master_sees_everything(w: World) -> None:
    async with cg.connect(w.t, w.master) as s:
        expect_eq(s.initialize_result.server_info.name, "commguard", "serverInfo.name")
        missing = MASTER_TOOLS - await cg.tool_names(s)
        expect(not missing, f"master tools/list lacks {sorted(missing)}")
        ping = expect_ok(await cg.call(s, "comms_ping"), "master comms_ping")
        expect_eq(ping.get("status"), "ok", "comms_ping status")
        expect_eq(ping.get("server"), "commguard", "comms_ping server")
        expect_eq(ping["principal"].get("kind"), "super-admin", "master principal.kind")
        expect_eq(ping["principal"].get("id"), "master", "master principal.id (§4.1)")


async def create_org(s, slug: str) -> Holder:
    # a2pRegistered so that provisioning a US phone agent meets the country rules (docs/compliance.md#country-rules).
    body = expect_ok(await cg.call(s, "comms_create_organization",
                                   {"name": f"E2E {slug}", "slug": slug, "a2pRegistered": True}),
                     f"create org {slug}")
    expect_eq(body.get("success"), True, "create org success")
    expect_eq(body.get("slug"), slug, "create org slug")
    expect_eq(body.get("mode"), "sandbox", "new org mode")
    expect(isinstance(body.get("orgId"), str) and body["orgId"], f"create org: no orgId in {body}")
    expect(cg.HEX64.match(str(body.get("adminToken"))), f"adminToken is not 64 lowercase hex: {body.get('adminToken')!r}")
    return Holder(body["orgId"], body["adminToken"])


async def master_creates_orgs(w: World) -> None:
    slug_a, slug_b = f"e2e-{w.t}-{w.run}-a", f"e2e-{w.t}-{w.run}-b"
    async with cg.connect(w.t, w.master) as s:
        w.org_a = await create_org(s, slug_a)
        dup = await cg.call(s, "comms_create_organization", {"name": "Duplicate", "slug": slug_a})
        expect_refusal(dup, "conflict", f'Organization slug "{slug_a}" already exists', "duplicate slug")
        w.org_b = await create_org(s, slug_b)
        expect(w.org_a.id != w.org_b.id and w.org_a.token != w.org_b.token, "two orgs share an id or a token")


async def org_token_is_not_super_admin(w: World) -> None:
    async with cg.connect(w.t, w.org_a.token) as s:
        names = await cg.tool_names(s)
        expect(ORG_TOOLS <= names, f"org tools/list lacks {sorted(ORG_TOOLS - names)}")
        expect(not names & cg.SUPER_TOOLS, f"org tools/list shows super-admin tools {sorted(names & cg.SUPER_TOOLS)}")
        who = await cg.principal(s)
        expect_eq((who.get("kind"), who.get("id")), ("org", w.org_a.id), "org principal (kind, id)")
        for tool, args in (("comms_create_organization", {"name": "Nope", "slug": f"e2e-nope-{w.run}"}),
                           ("comms_list_organizations", {})):
            expect_refusal(await cg.call(s, tool, args), "forbidden", cg.SUPER_REQUIRED, f"org calls {tool}")


async def provision(s, name: str, capabilities: dict, org_id: str) -> Holder:
    body = expect_ok(await cg.call(s, "comms_provision_channels",
                                   {"displayName": name, "country": "US", "capabilities": capabilities}),
                     f"provision {name}")
    expect(cg.HEX64.match(str(body.get("securityToken"))), f"securityToken not 64 hex: {body.get('securityToken')!r}")
    expect_eq(body.get("orgId"), org_id, "provisioned agent orgId")
    expect_eq(body.get("displayName"), name, "provisioned agent displayName")
    expect(re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", str(body.get("agentId"))), f"bad agentId {body.get('agentId')!r}")
    channels = body.get("channels") or {}
    for channel, wanted in capabilities.items():
        expect(bool(channels.get(channel)) == wanted, f"channels.{channel} should be {'set' if wanted else 'unset'}: {channels}")
    return Holder(body["agentId"], body["securityToken"])


async def org_provisions_agents(w: World) -> None:
    async with cg.connect(w.t, w.org_a.token) as s:
        w.agent1 = await provision(s, "E2E agent one", {"phone": True, "email": True}, w.org_a.id)
        w.agent2 = await provision(s, "E2E agent two", {"email": True}, w.org_a.id)
    async with cg.connect(w.t, w.agent1.token) as s:  # the new token works at once
        who = await cg.principal(s)
        expect_eq((who.get("kind"), who.get("id"), who.get("orgId")), ("agent", w.agent1.id, w.org_a.id),
                  "agent principal (kind, id, orgId)")
        status = expect_ok(await cg.call(s, "comms_get_channel_status"), "agent's own channel status")
        expect_eq(status.get("agentId"), w.agent1.id, "channel status defaults to the token's agent")
        expect_eq(status.get("orgId"), w.org_a.id, "channel status orgId")
        expect_eq(status.get("status"), "active", "new agent status")


async def agent_token_is_not_admin(w: World) -> None:
    async with cg.connect(w.t, w.agent1.token) as s:
        names = await cg.tool_names(s)
        expect(AGENT_TOOLS <= names, f"agent tools/list lacks {sorted(AGENT_TOOLS - names)}")
        expect(not names & NOT_FOR_AGENTS, f"agent tools/list shows {sorted(names & NOT_FOR_AGENTS)}")
        refused = await cg.call(s, "comms_provision_channels",
                                {"displayName": "Nope", "country": "US", "capabilities": {"email": True}})
        expect_refusal(refused, "forbidden", cg.ADMIN_REQUIRED, "agent calls comms_provision_channels")
        other = await cg.call(s, "comms_get_channel_status", {"agentId": w.agent2.id})
        expect_refusal(other, "forbidden", f'Token for agent "{w.agent1.id}" cannot access agent "{w.agent2.id}"',
                       "agent reads another agent")


async def impersonation_refused_at_open(w: World) -> None:
    reply = await cg.open_status(w.t, w.agent1.token, w.agent2.id)
    expect_http(reply, 401, "agent token claiming another agent", error=cg.AGENT_MISMATCH, code="unauthorized")
    async with cg.connect(w.t, w.agent1.token, w.agent1.id) as s:  # claiming its own agent is fine
        expect_eq((await cg.principal(s)).get("id"), w.agent1.id, "agent principal with its own claim")


async def org_boundary(w: World) -> None:
    a1, ghost = w.agent1.id, cg.unique("e2e-ghost")
    async with cg.connect(w.t, w.org_b.token) as s:
        for tool in ("comms_get_channel_status", "comms_deprovision_channels"):
            expect_refusal(await cg.call(s, tool, {"agentId": a1}), "forbidden", not_in_org(a1), f"org B {tool} on A's agent")
            expect_refusal(await cg.call(s, tool, {"agentId": ghost}), "not_found", f'Agent "{ghost}" not found',
                           f"org B {tool} on an unknown agent")
    expect_http(await cg.open_status(w.t, w.org_b.token, a1), 403, "org B claims A's agent at open",
                error=not_in_org(a1), code="forbidden")
    expect_http(await cg.open_status(w.t, w.org_b.token, ghost), 404, "org B claims an unknown agent at open",
                error=f'Agent "{ghost}" not found', code="not_found")
    async with cg.connect(w.t, w.org_a.token, a1) as s:  # org A may claim it; the claim is the default agentId
        status = expect_ok(await cg.call(s, "comms_get_channel_status"), "org A with claim reads channel status")
        expect_eq(status.get("agentId"), a1, "session claim is the tools' default agentId (§4.1)")


def expect_rotation(body: dict, kind: str, target_id: str, old_token: str) -> str:
    expect(cg.HEX64.match(str(body.get("token"))), f"rotated token is not 64 hex: {body.get('token')!r}")
    expect(body["token"] != old_token, "rotation returned the old token")
    expect(body.get("tokenId"), f"rotation result has no tokenId: {body}")
    expect(isinstance(body.get("revokedCount"), int) and body["revokedCount"] >= 1, f"revokedCount < 1: {body}")
    expect_eq(body.get("target"), {"kind": kind, "id": target_id}, "rotation target")
    return body["token"]


async def expect_token_refused(w: World, token: str, what: str) -> None:
    expect_http(await cg.open_status(w.t, token), 401, what, error=cg.INVALID_TOKEN, code="unauthorized")


async def rotation(w: World) -> None:
    # The agent rotates its own token; its own session (opened with the old token) must close.
    old = w.agent1.token
    async with cg.connect(w.t, old) as s:
        new = expect_rotation(expect_ok(await cg.call(s, "comms_rotate_token"), "agent rotates its token"),
                              "agent", w.agent1.id, old)
        await expect_token_refused(w, old, "old agent token after rotation")
        took = await cg.expect_session_closed(s, probe_token=new)
    print(f"  agent session opened with the old token closed after {took:.1f}s")
    w.agent1.token = new
    async with cg.connect(w.t, new) as s:
        expect_eq((await cg.principal(s)).get("id"), w.agent1.id, "principal with the rotated token")

    # The org admin rotates the agent's token, then its own org token.
    old_agent, old_org = w.agent1.token, w.org_a.token
    async with cg.connect(w.t, old_org) as s:
        body = expect_ok(await cg.call(s, "comms_rotate_token", {"target": "agent", "agentId": w.agent1.id}),
                         "org rotates its agent's token")
        w.agent1.token = expect_rotation(body, "agent", w.agent1.id, old_agent)
        await expect_token_refused(w, old_agent, "agent token rotated by the org admin")
        tokens = await cg.request("GET", f"/admin/api/agents/{w.agent1.id}/tokens", token=old_org)
        expect_http(tokens, 200, "GET /admin/api/agents/:agentId/tokens")
        active = [t.get("id") for t in tokens.body.get("tokens", [])]
        expect_eq(active, [body["tokenId"]], "active agent tokens after rotation")

        body = expect_ok(await cg.call(s, "comms_rotate_token", {"target": "org"}), "org rotates its own token")
        w.org_a.token = expect_rotation(body, "org", w.org_a.id, old_org)
        await expect_token_refused(w, old_org, "old org token")
        expect_http(await cg.admin_me(old_org), 401, "/admin/api/me with the old org token",
                    error="Invalid admin token", code="unauthorized")
        await cg.expect_session_closed(s, probe_token=w.org_a.token)
    async with cg.connect(w.t, w.agent1.token) as s:
        expect_eq((await cg.principal(s)).get("id"), w.agent1.id, "agent token issued by the org admin works")
    me = expect_http(await cg.admin_me(w.org_a.token), 200, "/admin/api/me with the new org token")
    expect_eq(me.body.get("orgId"), w.org_a.id, "/admin/api/me orgId")
    async with cg.connect(w.t, w.org_a.token) as s:
        who = await cg.principal(s)
        expect_eq((who.get("kind"), who.get("id")), ("org", w.org_a.id), "principal with the rotated org token")


async def deprovision(w: World) -> None:
    a1 = w.agent1.id
    async with cg.connect(w.t, w.agent1.token) as agent_session:
        async with cg.connect(w.t, w.org_a.token) as s:
            body = expect_ok(await cg.call(s, "comms_deprovision_channels", {"agentId": a1}), "deprovision")
            expect_eq(body.get("agentId"), a1, "deprovision agentId")
            expect_eq(body.get("status"), "deprovisioned", "deprovision status")
            expect(isinstance(body.get("tokensRevoked"), int) and body["tokensRevoked"] >= 1,
                   f"tokensRevoked < 1: {body}")
            await expect_token_refused(w, w.agent1.token, "token of a deprovisioned agent")
            again = await cg.call(s, "comms_deprovision_channels", {"agentId": a1})
            expect_refusal(again, "conflict", f'Agent "{a1}" is already deprovisioned', "deprovision twice")
            status = expect_ok(await cg.call(s, "comms_get_channel_status", {"agentId": a1}), "status after deprovision")
            expect_eq(status.get("status"), "deprovisioned", "agent status after deprovision")
        await cg.expect_session_closed(agent_session, probe_token=w.agent1.token)


async def session_mismatch(w: World) -> None:
    async with cg.connect(w.t, w.org_a.token) as s:
        sid = cg.session_id(s)
        probe = cg.jsonrpc("tools/list", id="e2e-mismatch")
        if w.t == "sse":
            reply = await cg.post_messages(sid, probe, token=w.org_b.token)
        else:
            reply = await cg.mcp_post(probe, token=w.org_b.token, session=sid)
        expect_http(reply, 403, "org B token posts into org A's session", error=cg.SESSION_MISMATCH, code="forbidden")
        if w.t == "sse":  # the owner's own header is accepted (docs/mcp.md#legacy-httpsse step 4)
            owner = await cg.post_messages(sid, cg.jsonrpc("ping", id="e2e-owner"), token=w.org_a.token)
            expect_http(owner, 202, "org A token posts into its own session")
        expect_eq((await cg.principal(s)).get("id"), w.org_a.id, "the session still serves its owner")


async def tool_result_shapes(w: World) -> None:
    async with cg.connect(w.t, w.master) as s:
        unknown = await cg.call(s, "comms_no_such_tool", {})
        expect_refusal(unknown, "not_found", "Unknown tool: comms_no_such_tool", "unknown tool")
        bad = await cg.call(s, "comms_create_organization", {"name": "Bad slug", "slug": "X Y"})
        expect(isinstance(expect_refusal(bad, "invalid_input", None, "slug 'X Y'").get("error"), str),
               "invalid_input refusal has no error text")
        ping = expect_ok(await cg.call(s, "comms_ping", {"message": "hello", "noSuchArgument": 1}),
                         "unknown arguments are ignored")
        expect_eq(ping.get("echo"), "hello", "comms_ping echo")


async def streamable_http_edges(w: World) -> None:
    no_auth = await cg.mcp_post(cg.initialize_msg())
    expect_http(no_auth, 401, "POST /mcp without Authorization", error=cg.MISSING_BEARER, code="unauthorized")
    expect_eq(no_auth.headers.get("www-authenticate"), 'Bearer realm="commguard"', "WWW-Authenticate")
    query_token = await cg.request("POST", "/mcp", params={"token": w.master}, json_body=cg.initialize_msg(),
                                   headers={"Accept": cg.MCP_ACCEPT, "Content-Type": "application/json"})
    expect_http(query_token, 401, "POST /mcp?token= (ignored on /mcp)", error=cg.MISSING_BEARER)

    listing = cg.jsonrpc("tools/list", id="e2e-edge")
    expect_http(await cg.mcp_post(listing, token=w.master), 400, "non-initialize request without Mcp-Session-Id")
    expect_http(await cg.mcp_post(listing, token=w.master, session=os.urandom(16).hex()), 404, "unknown Mcp-Session-Id")
    for accept in ("application/json", "text/event-stream"):
        expect_http(await cg.mcp_post(cg.initialize_msg(), token=w.master, accept=accept), 406, f"Accept: {accept}")

    opened = expect_http(await cg.mcp_post(cg.initialize_msg(), token=w.master), 200, "initialize")
    sid = opened.headers.get("mcp-session-id") or ""
    expect(cg.HEX32.match(sid), f"Mcp-Session-Id is not 32 hex: {sid!r}")
    initialized = cg.jsonrpc("notifications/initialized", id=None)
    expect_http(await cg.mcp_post(initialized, token=w.master, session=sid), 202, "notification → 202")
    expect_http(await cg.mcp_post(listing, token=w.master, session=sid), 200, "request on the new session")
    deleted = await cg.request("DELETE", "/mcp", token=w.master,
                               headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": cg.PROTOCOL})
    expect_http(deleted, 204, "DELETE /mcp")
    expect_http(await cg.mcp_post(listing, token=w.master, session=sid), 404, "request on a deleted session")


async def sse_http_edges(w: World) -> None:
    expect_http(await cg.sse_open(), 401, "GET /sse without token",
                error="Missing token. Use: /sse?token=<token>", code="unauthorized")
    expect_http(await cg.sse_open(token=cg.unique("not-a-token")), 401, "GET /sse with an invalid token",
                error=cg.INVALID_TOKEN, code="unauthorized")
    unknown = await cg.post_messages(str(uuid.uuid4()), cg.jsonrpc("ping", id="e2e-edge"))
    expect_http(unknown, 400, "POST /messages with an unknown sessionId", error="Unknown session", code="not_found")
    async with httpx2.AsyncClient(base_url=cg.base_url(), timeout=cg.TIMEOUT) as client:
        async with client.stream("GET", "/sse", params={"token": w.master}) as response:
            expect_eq(response.status_code, 200, "GET /sse with the master token")
            first = None
            async for first in httpx2.EventSource(response):
                break
    expect(first is not None, "the event stream closed before its first event")
    expect_eq(first.event, "endpoint", "first SSE event")
    expect(re.match(r"^/messages\?sessionId=[0-9a-f-]{36}$", first.data), f"endpoint data: {first.data!r}")


# ---------------------------------------------------------------- main

async def main(transport: str) -> None:
    w = World(t=transport, master=cg.master_token(), run=os.urandom(3).hex())
    print(f"mcp_identity over {transport} against {cg.base_url()} (run {w.run})")
    steps = [
        ("1 master token: tools and ping", master_sees_everything),
        ("2 master creates orgs; duplicate slug conflicts", master_creates_orgs),
        ("3 org token: super-admin tools hidden and refused", org_token_is_not_super_admin),
        ("4 org provisions agents; agent token works at once", org_provisions_agents),
        ("5 agent token: admin tools hidden and refused; Z1", agent_token_is_not_admin),
        ("6 impersonation refused at open", impersonation_refused_at_open),
        ("7 org boundary (Z2) in tools and at open", org_boundary),
        ("8 token rotation: agent, org-admin, org", rotation),
        ("9 deprovision revokes tokens and closes sessions", deprovision),
        ("10 session bound to its principal", session_mismatch),
        ("11 tool result shapes", tool_result_shapes),
        ("12 HTTP edge cases", streamable_http_edges if transport == "streamable" else sse_http_edges),
    ]
    for name, fn in steps:
        with step(f"[{transport}] {name}"):
            await fn(w)
    print(f"mcp_identity over {transport}: all {len(steps)} steps passed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=cg.TRANSPORTS, required=True)
    transport = parser.parse_args().transport
    cg.run(lambda: main(transport))
