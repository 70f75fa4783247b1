"""Brute-force lockout shared by two instances on one database (docs/http.md#rate-limits-and-brute-force, docs/mcp.md#legacy-httpsse, docs/mcp.md#streamable-http, docs/admin-api.md).

Usage: COMMGUARD_URL=... COMMGUARD_URL_2=... COMMGUARD_MASTER_TOKEN=... mcp_lockout.py

Both servers use one database, BRUTE_FORCE_MAX_FAILURES=10 and see every request from 127.0.0.1.
Failures of every kind of credential check (/mcp, /sse, /admin/api; missing and invalid credentials)
are spread over both servers; the 10th still gets its 401, then even the valid master token is
refused with 429 on both. This leaves 127.0.0.1 locked: run it last, or on servers of its own.
"""

from __future__ import annotations

import cg
from cg import expect, expect_eq, expect_http, step

THRESHOLD = 10


def failures(bad: str):
    """The credential failures, as (description, coroutine factory, expected error), one per kind."""
    return [
        ("POST /mcp initialize, invalid bearer",
         lambda url: cg.mcp_post(cg.initialize_msg(), token=bad, url=url), cg.INVALID_TOKEN),
        ("GET /sse, invalid token", lambda url: cg.sse_open(bad, url=url), cg.INVALID_TOKEN),
        ("GET /admin/api/me, invalid bearer", lambda url: cg.admin_me(bad, url=url), "Invalid admin token"),
        ("POST /mcp initialize, no Authorization",
         lambda url: cg.mcp_post(cg.initialize_msg(), url=url), cg.MISSING_BEARER),
        ("GET /sse, no token", lambda url: cg.sse_open(url=url), "Missing token. Use: /sse?token=<token>"),
        ("GET /admin/api/me, no Authorization", lambda url: cg.admin_me(None, url=url), cg.MISSING_BEARER),
    ]


def expect_locked(reply: cg.Reply, what: str) -> None:
    expect_http(reply, 429, what, error=cg.LOCKED_OUT, code="locked_out")
    retry_after = reply.body.get("retryAfter")
    expect(isinstance(retry_after, int) and retry_after > 0, f"{what}: retryAfter must be > 0, got {retry_after!r}")
    header = reply.headers.get("retry-after", "")
    expect(header.isdigit() and int(header) >= 1, f"{what}: Retry-After header must be seconds >= 1, got {header!r}")


async def main() -> None:
    one, two, master = cg.env("COMMGUARD_URL"), cg.env("COMMGUARD_URL_2"), cg.master_token()
    print(f"mcp_lockout against {one} and {two}")

    with step("0 a success resets the failure count; the IP is not locked"):
        expect_http(await cg.admin_me(master, url=one), 200, "server 1 /admin/api/me with the master token")
        expect_http(await cg.admin_me(master, url=two), 200, "server 2 /admin/api/me with the master token")

    kinds = failures(cg.unique("not-a-token"))
    plan = [(one, kinds[i % len(kinds)]) for i in range(5)] + [(two, kinds[(i + 2) % len(kinds)]) for i in range(5)]
    with step("1 nine failures over two servers, each 401"):
        for n, (url, (what, send, error)) in enumerate(plan[:THRESHOLD - 1], start=1):
            expect_http(await send(url), 401, f"failure {n} ({what} on {url})", error=error, code="unauthorized")

    with step("2 the 10th failure (server 2) still gets its 401"):
        url, (what, send, error) = plan[THRESHOLD - 1]
        expect_eq(url, two, "the 10th failure goes to server 2")
        expect_http(await send(url), 401, f"failure 10 ({what} on {url})", error=error, code="unauthorized")

    with step("3 the valid master token is locked out on server 1"):
        expect_locked(await cg.mcp_post(cg.initialize_msg(), token=master, url=one), "server 1 POST /mcp, master token")
        expect_locked(await cg.admin_me(master, url=one), "server 1 /admin/api/me, master token")

    with step("4 and on server 2"):
        expect_locked(await cg.sse_open(master, url=two), "server 2 GET /sse, master token")
        expect_locked(await cg.mcp_post(cg.initialize_msg(), token=master, url=two), "server 2 POST /mcp, master token")

    print("mcp_lockout: all steps passed")


if __name__ == "__main__":
    cg.run(main, cg.env("COMMGUARD_URL"), cg.env("COMMGUARD_URL_2"))
