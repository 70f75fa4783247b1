"""Servers without a master token: dev-open and demo (docs/security.md#development-and-demo-modes, docs/mcp.md#tool-results, docs/http.md#routes /health).

Usage: COMMGUARD_URL=... mcp_modes.py --mode dev-open|demo

dev-open: started with no master token (development). demo: DEMO_MODE=true, no master token.
"""

from __future__ import annotations

import argparse
from typing import Any

import cg
from cg import expect, expect_eq, expect_http, expect_ok, step


def has_demo_flag(value: Any) -> bool:
    """True if `"demo": true` appears anywhere in the value (text JSON, structuredContent or _meta)."""
    if isinstance(value, dict):
        return value.get("demo") is True or any(has_demo_flag(v) for v in value.values())
    if isinstance(value, list):
        return any(has_demo_flag(v) for v in value)
    return False


async def ping_result(session) -> tuple[dict, bool]:
    """comms_ping's parsed text, and whether `demo: true` appears anywhere in the result."""
    raw = await cg.call_raw(session, "comms_ping")
    body = expect_ok(cg.parse(raw, "comms_ping"), "comms_ping")
    return body, has_demo_flag(body) or has_demo_flag(raw.model_dump(by_alias=True, mode="json"))


async def no_credential_is_super_admin(mode: str) -> None:
    for transport in cg.TRANSPORTS:
        async with cg.connect(transport) as s:
            body, demo_flag = await ping_result(s)
            expect_eq(body.get("principal", {}).get("kind"), "super-admin", f"{transport}: principal.kind without credential")
            if mode == "demo":
                expect(demo_flag, f"{transport}: demo mode result carries no demo:true (§4.4): {body}")
            print(f"  {transport}: no credential → super-admin")


async def provision_agent(mode: str) -> tuple[str, str]:
    # Email only: the default org is not A2P-registered, so a US phone would be blocked (docs/compliance.md#country-rules).
    async with cg.connect("streamable") as s:
        body = expect_ok(await cg.call(s, "comms_provision_channels",
                                       {"displayName": f"E2E {mode} agent", "country": "US",
                                        "capabilities": {"email": True}}),
                         "provision an agent without credential")
    expect(cg.HEX64.match(str(body.get("securityToken"))), f"securityToken not 64 hex: {body}")
    return body["agentId"], body["securityToken"]


async def agent_token_is_that_agent(agent_id: str, token: str) -> None:
    for transport in cg.TRANSPORTS:
        async with cg.connect(transport, token) as s:
            who = (await ping_result(s))[0].get("principal", {})
            expect_eq((who.get("kind"), who.get("id")), ("agent", agent_id), f"{transport}: agent token principal")


async def dev_open() -> None:
    with step("dev-open: /health says development, not demo"):
        health = expect_http(await cg.request("GET", "/health"), 200, "/health")
        expect_eq((health.body.get("demoMode"), health.body.get("mode")), (False, "live"), "/health demoMode, mode")
    with step("dev-open: no credential → super-admin on both transports"):
        await no_credential_is_super_admin("dev-open")
    with step("dev-open: a presented invalid token is still refused"):
        bad = cg.unique("not-a-token")
        for transport in cg.TRANSPORTS:
            expect_http(await cg.open_status(transport, bad), 401, f"{transport}: invalid token",
                        error=cg.INVALID_TOKEN, code="unauthorized")
    with step("dev-open: a valid agent token is verified and names its agent"):
        agent_id, token = await provision_agent("dev-open")
        await agent_token_is_that_agent(agent_id, token)


async def demo() -> None:
    with step("demo: /health says demo"):
        health = expect_http(await cg.request("GET", "/health"), 200, "/health")
        expect_eq((health.body.get("demoMode"), health.body.get("mode")), (True, "demo"), "/health demoMode, mode")
    with step("demo: no credential → super-admin, results say demo:true"):
        await no_credential_is_super_admin("demo")
    with step("demo: a valid agent token is that agent with super-admin rights"):
        agent_id, token = await provision_agent("demo")
        await agent_token_is_that_agent(agent_id, token)
        for transport in cg.TRANSPORTS:
            async with cg.connect(transport, token) as s:
                expect("comms_create_organization" in await cg.tool_names(s),
                       f"{transport}: demo agent's tools/list lacks comms_create_organization")
                slug = cg.unique(f"e2e-demo-{transport}")
                body = expect_ok(await cg.call(s, "comms_create_organization", {"name": "E2E demo", "slug": slug}),
                                 f"{transport}: demo agent creates an org")
                expect_eq(body.get("slug"), slug, "created org slug")
                expect(cg.HEX64.match(str(body.get("adminToken"))), f"adminToken not 64 hex: {body}")


async def main(mode: str) -> None:
    print(f"mcp_modes --mode {mode} against {cg.base_url()}")
    await (dev_open() if mode == "dev-open" else demo())
    print(f"mcp_modes {mode}: all steps passed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("dev-open", "demo"), required=True)
    mode = parser.parse_args().mode
    cg.run(lambda: main(mode))
