"""Shared helpers for the commguard end-to-end scripts (docs/http.md#routes and docs/errors.md, docs/admin-api.md, docs/http.md#hardening).

Connect with the official MCP Python SDK (mcp 2.3.0) over either transport, call tools and
read their JSON results, and make raw HTTP requests whose status codes and bodies we assert.
Configuration comes from the environment: COMMGUARD_URL (e.g. http://127.0.0.1:41234) and,
for scripts that need it, COMMGUARD_MASTER_TOKEN.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
import weakref
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx2  # mcp 2.3.0 ships httpx2 (the httpx API under a new name), not httpx
import mcp_types as types
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

logging.getLogger("mcp").setLevel(logging.ERROR)  # hide the SDK's warnings, e.g. a refused DELETE on exit

TRANSPORTS = ("sse", "streamable")
TIMEOUT = 15.0  # seconds for any single request or tool call
STREAM_IDLE = 60.0  # longest silence on an event stream (the server pings every 15 s, docs/mcp.md#legacy-httpsse)
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
MCP_ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-06-18"  # what raw /mcp requests speak (docs/mcp.md#sessions)

# Refusal texts quoted from the contract (docs/mcp.md#legacy-httpsse, docs/mcp.md#streamable-http, docs/security.md#authorization-rules, docs/http.md#rate-limits-and-brute-force).
INVALID_TOKEN = "Invalid or revoked token"
MISSING_BEARER = "Missing Authorization header. Use: Bearer <token>"
AGENT_MISMATCH = "Token agentId does not match requested agentId"
ADMIN_REQUIRED = "Admin access required. Agent tokens cannot perform this action."
SUPER_REQUIRED = "Super-admin access required. Only the orchestrator token can perform this action."
SESSION_MISMATCH = "Session belongs to a different principal"
LOCKED_OUT = "Too many failed attempts. Try again later."

# Tool sets by role (docs/tools.md#catalogue): S-only tools and O/S-only tools.
SUPER_TOOLS = {"comms_create_organization", "comms_list_organizations", "comms_set_agent_limits",
               "comms_set_billing_config", "comms_register_provider"}
ADMIN_TOOLS = {"comms_provision_channels", "comms_deprovision_channels"}


# ---------------------------------------------------------------- configuration and running

def env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        sys.exit(f"environment variable {name} is required")
    return value.rstrip("/") if name.startswith("COMMGUARD_URL") else value


def base_url() -> str:
    return env("COMMGUARD_URL")


def master_token() -> str:
    return env("COMMGUARD_MASTER_TOKEN")


def unique(prefix: str) -> str:
    """A slug/id that no earlier run used, so runs can share a server and its database."""
    return f"{prefix}-{os.urandom(4).hex()}"


_step = "start-up"


class Unreachable(Exception):
    """The server did not answer GET /health at all."""


@contextmanager
def step(name: str):
    """Name the step being run; prints `PASS <name>` on success, `FAIL <name>` on failure."""
    global _step
    _step = name
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"FAIL {name}", flush=True)
        raise
    print(f"PASS {name} ({time.monotonic() - started:.1f}s)", flush=True)


def run(main, *urls: str) -> None:
    """Run `main` under anyio: exit 0 on success, else print the traceback and exit 1.

    Each URL is probed first (GET /health) so that an unreachable server fails with one clear line.
    """
    async def probe_then_main():
        for url in urls or (base_url(),):
            try:
                async with httpx2.AsyncClient(timeout=5.0) as client:
                    await client.get(f"{url}/health")
            except httpx2.TransportError as exc:
                raise Unreachable(f"cannot reach commguard at {url}: {type(exc).__name__}: {exc}") from None
        await main()

    try:
        anyio.run(probe_then_main)
    except Unreachable as exc:
        print(f"FAIL {_step}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except BaseException as exc:  # noqa: BLE001 - any failure ends the run with its traceback
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        traceback.print_exc()
        leaf = _leaf(exc)
        print(f"FAIL in step '{_step}': {type(leaf).__name__}: {leaf}", file=sys.stderr, flush=True)
        sys.exit(1)


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) anyio exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# ---------------------------------------------------------------- assertions

def expect(cond: Any, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def expect_eq(actual: Any, expected: Any, what: str) -> None:
    expect(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


def expect_ok(result: tuple[bool, Any], what: str) -> Any:
    """A tool result that must be a success; returns its parsed JSON."""
    is_error, body = result
    expect(not is_error, f"{what}: expected success, got isError with {body!r}")
    return body


def expect_refusal(result: tuple[bool, Any], code: str, error: str | None, what: str) -> dict:
    """A tool result that must be an isError refusal with this docs/errors.md code (and exact message)."""
    is_error, body = result
    expect(is_error, f"{what}: expected refusal {code!r}, got success {body!r}")
    expect(isinstance(body, dict), f"{what}: refusal text is not a JSON object: {body!r}")
    expect_eq(body.get("code"), code, f"{what}: refusal code (body {body!r})")
    if error is not None:
        expect_eq(body.get("error"), error, f"{what}: refusal message")
    return body


# ---------------------------------------------------------------- MCP sessions

@dataclass
class _Conn:
    transport: str
    session_id: str | None
    ended: anyio.Event | None  # sse only: set when the server ends the event stream


_conns: "weakref.WeakKeyDictionary[ClientSession, _Conn]" = weakref.WeakKeyDictionary()


class _EndWatch:
    """Read-stream proxy that notes when the transport's stream ends (the server closed it)."""

    def __init__(self, inner):
        self._inner = inner
        self.ended = anyio.Event()

    @property
    def last_context(self):  # the SDK's dispatcher reads this after each item
        return getattr(self._inner, "last_context", None)

    async def receive(self):
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.ended.set()
            raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self):
        await self._inner.aclose()

    def close(self):
        self._inner.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


async def _ready(session: ClientSession) -> None:
    """Initialize, then list the tools once: after a successful call of a tool it has not seen
    listed, the SDK lists tools again to validate the result (ClientSession.validate_tool_result),
    which fails right after a call that revoked the session's own token (comms_rotate_token)."""
    await session.initialize()
    await session.list_tools()


@asynccontextmanager
async def connect(transport: str, token: str | None = None, agent_id: str | None = None, *, url: str | None = None):
    """An initialized ClientSession over `transport`.

    sse: GET /sse?token=&agentId= with the SDK's legacy SSE client (POSTs carry no header).
    streamable: POST /mcp with `Authorization: Bearer <token>` and optional `X-Agent-Id`.
    """
    base = url or base_url()
    if transport == "sse":
        query = urlencode({k: v for k, v in (("token", token), ("agentId", agent_id)) if v})
        session_ids: list[str] = []
        async with sse_client(f"{base}/sse" + (f"?{query}" if query else ""), timeout=TIMEOUT,
                              sse_read_timeout=STREAM_IDLE, on_session_created=session_ids.append) as (read, write):
            watched = _EndWatch(read)
            async with ClientSession(watched, write, read_timeout_seconds=TIMEOUT) as session:
                await _ready(session)
                _conns[session] = _Conn("sse", session_ids[0] if session_ids else None, watched.ended)
                yield session
    elif transport == "streamable":
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if agent_id:
            headers["X-Agent-Id"] = agent_id
        seen: list[str] = []

        async def remember_session_id(response: httpx2.Response) -> None:
            if sid := response.headers.get("mcp-session-id"):
                seen.append(sid)

        client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT, read=STREAM_IDLE),
                                    event_hooks={"response": [remember_session_id]})
        async with client, streamable_http_client(f"{base}/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session:
                await _ready(session)
                _conns[session] = _Conn("streamable", seen[0] if seen else None, None)
                yield session
    else:
        raise ValueError(f"unknown transport {transport!r}; use one of {TRANSPORTS}")


def session_id(session: ClientSession) -> str:
    sid = _conns[session].session_id
    expect(sid, f"{_conns[session].transport}: the server gave no session id")
    return sid


async def call_raw(session: ClientSession, tool: str, args: dict | None = None):
    return await session.call_tool(tool, args or {})


def parse(result, tool: str) -> tuple[bool, Any]:
    """(isError, parsed JSON of content[0].text) of a CallToolResult, per docs/mcp.md#tool-results."""
    expect(result.content and result.content[0].type == "text",
           f"{tool}: expected content[0] of type text, got {result.content!r}")
    text = result.content[0].text
    try:
        return bool(result.is_error), json.loads(text)
    except json.JSONDecodeError:
        raise AssertionError(f"{tool}: content[0].text is not JSON: {text!r}") from None


async def call(session: ClientSession, tool: str, args: dict | None = None) -> tuple[bool, Any]:
    """Call a tool; returns (isError, parsed JSON of content[0].text)."""
    return parse(await call_raw(session, tool, args), tool)


async def tool_names(session: ClientSession) -> set[str]:
    names, cursor = set(), None
    while True:
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        names |= {tool.name for tool in page.tools}
        cursor = page.next_cursor
        if not cursor:
            return names


async def principal(session: ClientSession) -> dict:
    """comms_ping's principal {kind,id,orgId}."""
    body = expect_ok(await call(session, "comms_ping"), "comms_ping")
    return body.get("principal") or {}


async def expect_session_closed(session: ClientSession, probe_token: str | None, within: float = 5.0) -> float:
    """The server ends this session within `within` seconds (docs/mcp.md#sessions revocation); returns how long it took.

    sse: the event stream ends. streamable: a request on the session id (sent with `probe_token`,
    ideally a live token of the same principal, which the open session would accept) gets 401/404.
    """
    conn = _conns[session]
    started = time.monotonic()
    deadline = started + within + 0.5  # half a second for our own polling and scheduling
    if conn.transport == "sse":
        with anyio.move_on_after(deadline - time.monotonic()):
            await conn.ended.wait()
        expect(conn.ended.is_set(), f"sse: event stream of session {conn.session_id} still open after {within}s")
        reply = await post_messages(conn.session_id, jsonrpc("ping"))
        expect(reply.status in (400, 401),
               f"sse: POST /messages into closed session: expected 400/401, got {reply.status} {reply.text}")
    else:
        while True:
            reply = await mcp_post(jsonrpc("ping"), token=probe_token, session=conn.session_id)
            if reply.status in (401, 404):
                break
            expect(reply.status < 300, f"streamable: unexpected {reply.status} {reply.text} while waiting")
            expect(time.monotonic() < deadline,
                   f"streamable: session {conn.session_id} still answers {reply.status} after {within}s")
            await anyio.sleep(0.2)
    return time.monotonic() - started


# ---------------------------------------------------------------- raw HTTP

@dataclass
class Reply:
    status: int
    headers: httpx2.Headers
    text: str
    body: Any  # parsed JSON, or None (event streams are not read)

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:300]!r}>"


async def request(method: str, path: str, *, token: str | None = None, headers: dict | None = None,
                  params: dict | None = None, json_body: Any = None, url: str | None = None) -> Reply:
    """One raw request; an event-stream response is closed unread (its status is what we want)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(base_url=url or base_url(), timeout=TIMEOUT) as client:
        async with client.stream(method, path, headers=all_headers, params=params, json=json_body) as r:
            if r.headers.get("content-type", "").startswith("text/event-stream"):
                return Reply(r.status_code, r.headers, "", None)
            text = (await r.aread()).decode(errors="replace")
    try:
        body = json.loads(text) if text else None
    except json.JSONDecodeError:
        body = None
    return Reply(r.status_code, r.headers, text, body)


def expect_http(reply: Reply, status: int, what: str, *, error: str | None = None, code: str | None = None) -> Reply:
    """Status, and for errors the docs/errors.md JSON body's `error` and `code`."""
    expect_eq(reply.status, status, f"{what}: HTTP status (body {reply.text[:300]!r})")
    if error is not None or code is not None:
        expect(isinstance(reply.body, dict), f"{what}: body is not a JSON object: {reply.text[:300]!r}")
    if error is not None:
        expect_eq(reply.body.get("error"), error, f"{what}: body.error")
    if code is not None:
        expect_eq(reply.body.get("code"), code, f"{what}: body.code")
    return reply


def jsonrpc(method: str, params: dict | None = None, id: int | str | None = "e2e-raw") -> dict:
    """A JSON-RPC message; `id=None` makes a notification. String ids never collide with the SDK's."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if id is not None:
        msg["id"] = id
    return msg


def initialize_msg(version: str = PROTOCOL) -> dict:
    return jsonrpc("initialize", {"protocolVersion": version, "capabilities": {},
                                  "clientInfo": {"name": "commguard-e2e", "version": "0"}})


async def mcp_post(message: dict, *, token: str | None = None, session: str | None = None,
                   agent_id: str | None = None, accept: str = MCP_ACCEPT, url: str | None = None) -> Reply:
    """POST /mcp; sends MCP-Protocol-Version only after initialize (with a session id)."""
    headers = {"Accept": accept, "Content-Type": "application/json"}
    if session:
        headers["Mcp-Session-Id"] = session
        headers["MCP-Protocol-Version"] = PROTOCOL
    if agent_id:
        headers["X-Agent-Id"] = agent_id
    return await request("POST", "/mcp", token=token, headers=headers, json_body=message, url=url)


async def sse_open(token: str | None = None, agent_id: str | None = None, url: str | None = None) -> Reply:
    """GET /sse?token=&agentId= (a 200 stream is closed at once)."""
    params = {k: v for k, v in (("token", token), ("agentId", agent_id)) if v}
    return await request("GET", "/sse", params=params, url=url)


async def post_messages(sid: str, message: dict, token: str | None = None) -> Reply:
    return await request("POST", "/messages", params={"sessionId": sid}, token=token, json_body=message)


async def open_status(transport: str, token: str | None, agent_id: str | None = None, url: str | None = None) -> Reply:
    """Open a session without the SDK, to see the HTTP refusal: GET /sse, or POST /mcp initialize."""
    if transport == "sse":
        return await sse_open(token, agent_id, url=url)
    return await mcp_post(initialize_msg(), token=token, agent_id=agent_id, url=url)


async def admin_me(token: str | None, url: str | None = None) -> Reply:
    return await request("GET", "/admin/api/me", token=token, url=url)
